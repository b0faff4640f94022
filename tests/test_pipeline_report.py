"""benchmarks/pipeline_report.py runs run_pipeline.sh (as README shows it) on a tiny model and reports the run; its
numbers are recomputed here from the run's own metrics files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, run_step, tiny_workspace

STEPS = ["train_eager_qat.py", "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_eager_qat.py",
         "eval_onnx_qat.py", "eval_onnx_int8_dynamic.py", "eval_eager_qat.py", "eval_onnx_int8_dynamic.py"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    w = tiny_workspace(tmp_path_factory.mktemp("pipeline_report"))
    out = w["tmp"] / "reports"
    env = {**w["env"], "TRAIN_ARGS": "--epochs 1 --qat-epochs 1 --max-train-samples 300 --lr 2e-3"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline_report.py"), "--out-dir", str(out),
                           "--model", str(w["model"]), "--data-dir", str(w["data"]), "--run-name", "pr",
                           "--max-length", "48", "--batch-size", "16"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = {p.stem.removeprefix("metrics_"): json.loads(p.read_text())
               for p in (w["tmp"] / "results" / "pr").glob("metrics_*.json")}
    return {"json": json.loads((out / "pipeline_pr.json").read_text()), "md": (out / "pipeline_pr.md").read_text(),
            "metrics": metrics, "env": env, "tmp": w["tmp"]}


def test_every_step_timed_in_order(reported):
    s = reported["json"]
    assert [st["script"] for st in s["steps"]] == STEPS
    assert [("--per-text" in st["args"]) for st in s["steps"]] == [False] * 6 + [True] * 2
    assert all(st["seconds"] > 0 for st in s["steps"])
    assert sum(st["seconds"] for st in s["steps"]) + s["setup_seconds"] <= s["wall_seconds"] + 1e-6
    assert 0 <= s["setup_seconds"] < s["steps"][0]["seconds"]  # .venv exists: set-up is a check, training is not
    assert s["training"]["n_train"] == 300 and s["training"]["epochs"] == 1 and s["peak_rss_mb"] > 100


def test_scores_and_agreement_recomputed_from_the_metrics(reported):
    s, m = reported["json"], reported["metrics"]
    assert set(s["stages"]) == {"eager_qat", "onnx_qat", "onnx_int8_dynamic", "eager_qat_per_text",
                                "onnx_int8_dynamic_per_text"}
    for stage, r in s["stages"].items():
        assert r["f1_macro"] == m[stage]["f1_macro"] and r["accuracy"] == m[stage]["accuracy"]
    for a, b in (("onnx_int8_dynamic", "eager_qat"), ("onnx_int8_dynamic_per_text", "eager_qat_per_text")):
        c = s["pairs"][f"{a} vs {b}"]
        pa, pb = np.array(m[a]["predictions"]), np.array(m[b]["predictions"])
        assert c["agreement"] == pytest.approx((pa == pb).mean()) and c["n_differ"] == (pa != pb).sum()
        d = np.abs(np.array(m[a]["logits"]) - np.array(m[b]["logits"])).max(axis=1)
        assert c["logit_diff_max"] == pytest.approx(d.max()) and c["logit_diff_50"] == pytest.approx(np.median(d))
    assert s["stages"]["onnx_int8_dynamic_per_text"]["batch_size"] == 1 and s["stages"]["onnx_qat"]["batch_size"] == 16


def test_markdown_states_cpu_command_and_tables(reported):
    md, s = reported["md"], reported["json"]
    assert s["cpu"]["model"] in md and 'TRAIN_ARGS="--epochs 1 --qat-epochs 1 --max-train-samples 300 --lr 2e-3"' in md
    f1 = s["stages"]["onnx_int8_dynamic_per_text"]["f1_macro"] * 100
    assert f"| INT8 ONNX (as served) | 1 | " in md and f"{f1:.2f}" in md
    assert md.count("| `eval_") == 5 and "onnx_int8_dynamic_per_text vs eager_qat_per_text" in md
    weights = s["training"]["loss_weights"]
    assert "loss cross-entropy with label weights " + ", ".join(f"{l} {w:.2f}" for l, w in weights.items()) in md
    phases = s["phases"]
    ratio = (phases["fp32"]["wall_s"] + phases["qat"]["wall_s"]) / phases["fp32"]["wall_s"]
    assert f"Training took {ratio:.2f}x the FP32 phase alone" in md  # the time target's figure, from run_info


def test_no_run_reports_the_same_run_without_times(reported):
    out = reported["tmp"] / "again"
    proc = run_step("benchmarks/pipeline_report.py", "--no-run", "--run-name", "pr", "--out-dir", out,
                    env=reported["env"], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "pipeline_pr.json").read_text())
    assert again["stages"] == reported["json"]["stages"] and again["pairs"] == reported["json"]["pairs"]
    assert again["steps"] == [] and again["wall_seconds"] is None
    md = (out / "pipeline_pr.md").read_text()
    assert "step times and memory not measured" in md and "## Step times" not in md


def test_rerender_keeps_what_the_run_measured(reported):
    out = reported["tmp"] / "rerendered"
    out.mkdir()
    old = dict(reported["json"], stages={})  # a report written by older code: the rewrite recomputes the scores
    (out / "pipeline_pr.json").write_text(json.dumps(old))
    proc = run_step("benchmarks/pipeline_report.py", "--rerender", "--run-name", "pr", "--out-dir", out,
                    env=reported["env"], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = json.loads((out / "pipeline_pr.json").read_text())
    assert new.pop("rerendered")["args"][0] == "--rerender" and new == reported["json"]
    md = (out / "pipeline_pr.md").read_text()
    assert "rewritten" in md and "rewritten" not in reported["md"]
    assert md.split("## Training")[1] == reported["md"].split("## Training")[1]
    missing = run_step("benchmarks/pipeline_report.py", "--rerender", "--run-name", "pr", "--out-dir",
                       reported["tmp"] / "none", env=reported["env"], check=False, timeout=600)
    assert missing.returncode != 0 and "no report" in missing.stderr


def test_fidelity_trace_compares_each_level_with_the_simulation(reported):
    """benchmarks/fidelity_trace.py on the same run, at three ONNX Runtime levels: one row of stats per level, in the
    order asked; the tiny model's INT8 graph agrees with its simulation on every row at each level (as
    test_architectures requires at the deployed level); the traced row is followed through every quantizer."""
    import onnx

    out = reported["tmp"] / "trace"
    levels = ["ORT_ENABLE_ALL", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL"]
    proc = run_step("benchmarks/fidelity_trace.py", "--run-name", "pr", "--rows", "24", "--trace-rows", "1", "--levels",
                    *levels, "--out-dir", out, "--report-name", "levels.md", env=reported["env"], check=False,
                    timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "levels.json").read_text())
    assert list(res["stats"]) == levels
    for s in res["stats"].values():
        assert s["n"] == 24 and s["agreement"] == 1.0 and s["n_differ"] == 0 and s["texts_per_s"] > 0
    dql = [n for n in onnx.load(str(reported["tmp"] / "models" / "pr" / "model_qat_int8_dynamic.onnx")).graph.node
           if n.op_type == "DynamicQuantizeLinear"]
    (trace,) = res["traces"]
    assert len(trace["quantizers"]) == len(dql) > 0
    assert [q["tensor"] for q in trace["quantizers"]] == [n.input[0] for n in dql]
    md = (out / "levels.md").read_text()
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ORT_")] == [f"| {l}" for l in levels]
    refused = run_step("benchmarks/fidelity_trace.py", "--run-name", "pr", "--rows", "2", "--levels", "ORT_ENABLE_ALL",
                       "--out-dir", out / "no", env=reported["env"], check=False, timeout=600)
    assert refused.returncode != 0 and "add ORT_DISABLE_ALL to --levels" in refused.stderr
    assert not (out / "no").exists()
