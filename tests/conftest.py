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


# The fast tier (`bash run_tests.sh -m "not slow"`, for edit loops): every test that trains, converts or runs a model
# is marked slow, by the fixtures that build one or by @pytest.mark.slow on the test itself.
SLOW_FIXTURES = {"trained_run", "workspace", "runs", "smoke", "tiny_run", "tiny", "first_training", "retrained",
                 "reported", "run", "converted", "encoder", "xlmr", "linear_onnx", "tiny_bert", "server"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
