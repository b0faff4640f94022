import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (run_tests.sh): each worker and the scripts it starts compute on one thread, or the
    # workers' OpenMP threads compete for the same cores and every test gets slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
