"""benchmarks/ptq_vs_qat.py --smoke runs the whole comparison on a tiny model, so the benchmark never rots; its report
is checked against numbers recomputed here from the runs' own files (predictions, logits, test labels, run_info)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
ARMS = {  # report key -> (run, source stage)
    "ptq": ("fp32-s{seed}", "eager_fp32"),
    "qat": ("qat-s{seed}", "eager_qat"),
    "qatft": ("qatft-s{seed}", "eager_qat"),
    "ptq_long": ("fp32long-s{seed}", "eager_fp32"),
}
READING = "hand-written reading: must survive a rerun\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ptq")
    out = tmp / "reports"
    out.mkdir()
    (out / "ptq_vs_qat_reading.md").write_text(READING)
    # --max-length, --seeds and the non-default flags given explicitly: the smoke mode must pass them on
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ptq_vs_qat.py"), "--smoke", "--max-length", "24",
                           "--seeds", "7", "--group-by-length", "--class-weight", "none", "--out-dir", str(out),
                           "--work-dir", str(tmp / "work")],
                          capture_output=True, text=True, timeout=3600)  # a hang guard: ~7 CPU-minutes of steps
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    work = tmp / "work"
    return {"out": out, "work": work, "report": json.loads((out / "ptq_vs_qat.json").read_text()),
            "test": pd.read_csv(work / "data" / "test.csv", dtype=str, keep_default_na=False)}


def metrics(work, run, stage):
    return json.loads((work / "results" / run / f"metrics_{stage}.json").read_text())


def run_info(work, run):
    return json.loads((work / "models" / run / "run_info.json").read_text())


@pytest.mark.parametrize("arm", list(ARMS))
def test_reported_scores_recomputed_from_predictions(smoke, arm):
    row = smoke["report"]["per_seed"][0]
    assert row["seed"] == 7
    run, source_stage = (s.format(seed=7) if "{" in s else s for s in ARMS[arm])
    int8 = metrics(smoke["work"], run, "onnx_int8_dynamic")
    source = metrics(smoke["work"], run, source_stage)
    truth = smoke["test"]["label"].tolist()
    assert int8["predictions"] and len(int8["predictions"]) == len(truth)
    pred, src = np.array(int8["predictions"]), np.array(source["predictions"])
    r = row[arm]
    assert r["accuracy"] == pytest.approx(np.mean(pred == np.array(truth)))
    assert r["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro", labels=int8["labels"], zero_division=0))
    assert r["source_accuracy"] == pytest.approx(np.mean(src == np.array(truth)))
    assert r["agreement_with_source"] == pytest.approx(np.mean(pred == src))
    assert r["n_disagree"] == int((pred != src).sum())
    # the source's top-2 logit margin on the rows where INT8 differs
    top = np.sort(np.array(source["logits"]), axis=-1)
    margins = top[:, -1] - top[:, -2]
    differ = pred != src
    expected_max = float(margins[differ].max()) if differ.any() else None
    assert r["disagree_margin_max"] == (pytest.approx(expected_max, abs=1e-6) if differ.any() else None)
    assert r["margin_median_all"] == pytest.approx(float(np.median(margins)), abs=1e-6)
    shares = pd.Series(pred).value_counts(normalize=True)
    assert r["predicted_shares"] == pytest.approx({l: shares.get(l, 0.0) for l in int8["labels"]})
    # validation accuracy of the source model, as its training recorded it
    assert r["val_accuracy"] == run_info(smoke["work"], run)["val_accuracy"]


def test_drops_are_against_the_right_fp32(smoke):
    row = smoke["report"]["per_seed"][0]
    fp32 = metrics(smoke["work"], "fp32-s7", "eager_fp32")
    long = metrics(smoke["work"], "fp32long-s7", "eager_fp32")
    assert row["fp32"]["accuracy"] == fp32["accuracy"] and row["fp32long"]["accuracy"] == long["accuracy"]
    for arm in ("ptq", "qat", "qatft"):
        assert row[arm]["acc_drop"] == pytest.approx(fp32["accuracy"] - row[arm]["accuracy"])
    assert row["ptq_long"]["acc_drop"] == pytest.approx(long["accuracy"] - row["ptq_long"]["accuracy"])
    assert row["qat"]["agreement_with_source"] >= 0.99  # INT8 reproduces the QAT simulation


def test_options_reach_the_training_runs(smoke):
    cfg = smoke["report"]["config"]
    for run in ("fp32-s7", "qat-s7", "qatft-s7", "fp32long-s7"):
        info = run_info(smoke["work"], run)
        assert info["max_length"] == 24 and info["seed"] == 7 and info["n_train"] == cfg["max_train_samples"], run
    assert run_info(smoke["work"], "fp32long-s7")["epochs"] == cfg["epochs"] + cfg["qatft_epochs"]
    assert not run_info(smoke["work"], "fp32long-s7")["qat"] and run_info(smoke["work"], "qat-s7")["qat"]
    assert run_info(smoke["work"], "qatft-s7")["init_from"] == "fp32-s7"
    assert all(run_info(smoke["work"], run.format(seed=7))["group_by_length"] for run, _ in ARMS.values())
    assert all(run_info(smoke["work"], run.format(seed=7))["class_weight"] == "none" for run, _ in ARMS.values())


def test_report_generated_and_reading_kept(smoke):
    out = smoke["out"]
    md = (out / "ptq_vs_qat.md").read_text()
    assert "Mean ± std" in md and "trained as long as FP32 + QAT-ft" in md and "top-2 logit margin" in md
    assert "max length 24, plain cross-entropy" in md
    assert "[ptq_vs_qat_reading.md](ptq_vs_qat_reading.md)" in md
    assert (out / "ptq_vs_qat_reading.md").read_text() == READING
    assert [s["setting"] for s in smoke["report"]["settings"]] == ["int8-per-tensor", "int8-per-channel"]
    assert (out / "ptq_vs_qat.png").stat().st_size > 1000


def test_margins_of_the_rows_where_int8_differs():
    """The smoke models are too weak to disagree with their INT8 copies, so the margin arithmetic is checked here."""
    from ptq_vs_qat import disagreement_margins

    source = {"logits": [[2.0, 1.9, -1.0], [0.0, 3.0, 0.0], [1.0, 1.2, 0.5], [5.0, 0.0, 0.0]],
              "predictions": ["a", "b", "b", "a"]}
    out = disagreement_margins(source, {"predictions": ["b", "b", "a", "a"]})  # rows 0 and 2 differ
    assert out["n_disagree"] == 2
    assert out["disagree_margin_max"] == pytest.approx(0.2) and out["disagree_margin_median"] == pytest.approx(0.15)
    assert out["margin_median_all"] == pytest.approx((0.2 + 3.0) / 2)
    assert disagreement_margins(source, {"predictions": source["predictions"]})["disagree_margin_max"] is None


def test_report_without_the_finetune_arms(smoke, tmp_path):
    """--skip-finetune rows (no QAT fine-tune, no equal-budget control) give a report of the arms that ran, saying
    which did not, and a chart of those only."""
    import ptq_vs_qat

    rows = [{k: v for k, v in r.items() if k not in ("qatft", "ptq_long", "fp32long")}
            for r in smoke["report"]["per_seed"]]
    args = ptq_vs_qat.parse_args(["--skip-finetune", "--skip-settings"])
    info = {"data": "d", "n_test": len(smoke["test"]), "model_source": "m",
            "test_label_shares": smoke["report"]["test_label_shares"]}
    ptq_vs_qat.write_report(rows, [], args, info, tmp_path, 60.0)
    md = (tmp_path / "ptq_vs_qat.md").read_text()
    assert "not run (--skip-finetune)" in md and "QAT INT8 (from pretrained)" in md and "| 7 | PTQ INT8 |" in md
    assert "max length 64, class-balanced cross-entropy" in md  # the defaults that parse_args gave
    assert "fine-tune of FP32" not in md and "trained as long as" not in md and "epochs |" not in md
    assert "except the equal-budget PTQ row" not in md
    assert json.loads((tmp_path / "ptq_vs_qat.json").read_text())["per_seed"] == rows
    assert (tmp_path / "ptq_vs_qat.png").stat().st_size > 1000


def test_report_without_qat_from_pretrained(smoke, tmp_path):
    """--skip-from-pretrained rows (FP32, PTQ, the QAT fine-tune and its control) give a report of those arms under
    --report-name, saying QAT from pretrained did not run, and linking that name's reading only."""
    import ptq_vs_qat

    rows = [{k: v for k, v in r.items() if k != "qat"} for r in smoke["report"]["per_seed"]]
    args = ptq_vs_qat.parse_args(["--skip-from-pretrained", "--skip-settings", "--report-name", "ft"])
    info = {"data": "d", "n_test": len(smoke["test"]), "model_source": "m",
            "test_label_shares": smoke["report"]["test_label_shares"]}
    (tmp_path / "ptq_vs_qat_reading.md").write_text(READING)  # another report's reading: not linked
    ptq_vs_qat.write_report(rows, [], args, info, tmp_path, 60.0)
    md = (tmp_path / "ft.md").read_text()
    assert "QAT from the pretrained model: not run (--skip-from-pretrained)" in md
    assert "QAT INT8 (from pretrained)" not in md and "| 7 | QAT INT8 (fine-tune of FP32) |" in md
    assert "![chart](ft.png)" in md and "reading" not in md.split("![chart]")[1]
    assert not (tmp_path / "ptq_vs_qat.md").exists() and (tmp_path / "ft.png").stat().st_size > 1000
    assert json.loads((tmp_path / "ft.json").read_text())["per_seed"] == rows


@pytest.mark.parametrize("flags", [["--skip-from-pretrained", "--skip-finetune", "--skip-settings"],
                                   ["--skip-from-pretrained"]])
def test_skip_from_pretrained_refuses_what_it_cannot_run(flags):
    import ptq_vs_qat

    with pytest.raises(SystemExit):
        ptq_vs_qat.parse_args(flags)
