"""benchmarks/ptq_vs_qat.py --smoke runs the whole comparison on a tiny model, so the benchmark never rots."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ptq_vs_qat_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ptq_vs_qat.py"), "--smoke",
                           "--out-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "ptq_vs_qat.json").read_text())
    row = report["per_seed"][0]
    for key in ("ptq", "qat", "qatft"):
        assert 0 <= row[key]["accuracy"] <= 1 and 0 <= row[key]["agreement_with_source"] <= 1
    assert row["qat"]["agreement_with_source"] >= 0.99  # INT8 reproduces the QAT simulation
    assert [s["setting"] for s in report["settings"]] == ["int8-per-tensor", "int8-per-channel"]
    assert (tmp_path / "reports" / "ptq_vs_qat.png").stat().st_size > 1000
    assert "Mean ± std" in (tmp_path / "reports" / "ptq_vs_qat.md").read_text()
