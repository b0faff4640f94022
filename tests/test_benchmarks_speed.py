"""benchmarks/speed.py --smoke end to end, so the benchmark never rots."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("model", "backend", "batch_size", "seq_len", "threads", "median_ms", "size_mb")


def test_speed_benchmark_smoke(tmp_path):
    out_json = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--smoke", "--json", str(out_json),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    records = json.loads(out_json.read_text())
    assert isinstance(records, list) and records
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (missing, r)
    timed = [r for r in records if r["median_ms"] is not None]
    assert {r["backend"] for r in timed} == {"torch_fp32", "ort_fp32", "ort_int8"}
    assert all(r["median_ms"] > 0 and r["size_mb"] > 0 for r in timed)
    assert {1, 32} <= {r["batch_size"] for r in timed}
    assert {1, 2} <= {r["threads"] for r in timed}
    int8 = next(r for r in timed if r["backend"] == "ort_int8")
    fp32 = next(r for r in timed if r["backend"] == "ort_fp32")
    assert int8["size_mb"] < fp32["size_mb"]
    report = (tmp_path / "speed.md").read_text()
    assert "## Targets" in report and "avx512_vnni" in report
    assert (tmp_path / "speed.png").stat().st_size > 0
    mem = [r for r in records if r.get("measure") == "peak_rss"]
    assert {r["backend"] for r in mem} == {"torch_fp32", "ort_fp32", "ort_int8"}
    assert all(r["peak_rss_mb"] > r["baseline_rss_mb"] > 0 for r in mem)
