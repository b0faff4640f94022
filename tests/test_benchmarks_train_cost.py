"""benchmarks/train_cost.py --smoke end to end on a tiny BERT, so the benchmark never rots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_cost_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_cost.py"), "--smoke", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "train_cost_smoke.json").read_text())["results"]
    assert set(report) == {"fp32", "qat", "fp32-frozen", "qat-frozen", "eval"}
    for v in ("fp32", "qat", "fp32-frozen", "qat-frozen"):
        assert len(report[v]["step_s"]) == 3 and min(report[v]["step_s"]) > 0
    # freezing really removes the word embedding table from training, and only it
    table = report["fp32"]["trainable_params"] - report["fp32-frozen"]["trainable_params"]
    assert table > 0 and report["qat-frozen"]["trainable_params"] == report["fp32-frozen"]["trainable_params"]
    assert report["eval"]["qat"]["per_text_ms_median"] > 0
    text = (tmp_path / "train_cost_smoke.md").read_text()
    assert "## Targets" in text and "QAT step / FP32 step" in text
