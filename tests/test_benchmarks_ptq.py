"""benchmarks/ptq_vs_qat.py --smoke runs the whole comparison on a tiny model, so the benchmark never rots; its report
is checked against numbers recomputed here from the runs' own files (predictions, logits, test labels, run_info), and
its paired statistics against a direct computation."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from common import has_vnni
from helpers import run_cmd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
VNNI = has_vnni()  # without VNNI the benchmark measures 7-bit weights only (8-bit ones would compute otherwise)
ARMS = {  # report key -> (run, source stage): the FP32 run is quantized with 7-bit weights, requantized with 8-bit
    "ptq_7bit": ("fp32-s7", "eager_fp32"),
    "qat_7bit": ("qat-s7-7bit", "eager_qat"),
    **({"ptq_8bit": ("fp32-s7-8bit", "eager_fp32"), "qat_8bit": ("qat-s7-8bit", "eager_qat")} if VNNI else {}),
}
READING = "hand-written reading: must survive a rerun\n"
# the budget --smoke trains with, and the options the smoke run gives: what a later call over its runs must repeat
SMOKE_OPTIONS = ["--max-length", "24", "--group-by-length", "--class-weight", "none", "--distill-weight", "0.3",
                 "--max-train-samples", "200", "--epochs", "1", "--lr", "2e-3", "--qat-epochs", "1", "--qat-lr", "1e-3"]


def benchmark(*argv) -> subprocess.CompletedProcess:
    """`python benchmarks/ptq_vs_qat.py ARGV`, run in this process with its pipeline scripts forked from the test
    worker's step server (helpers.run_cmd) instead of each starting Python and importing torch anew."""
    import ptq_vs_qat

    argv = [str(a) for a in argv]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(ptq_vs_qat, "run_script", lambda cmd, env: run_cmd(cmd, env, timeout=1800))
        mp.setattr(sys, "argv", ["ptq_vs_qat.py", *argv])
        try:
            ptq_vs_qat.main()
        except SystemExit as e:  # sys.exit("message") exits 1 with the message on stderr, as from the shell
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ptq")
    out = tmp / "reports"
    out.mkdir()
    (out / "ptq_vs_qat_reading.md").write_text(READING)
    # --max-length, --seeds and the non-default flags given explicitly: the smoke mode must pass them on
    proc = benchmark("--smoke", "--max-length", "24", "--seeds", "7", "--group-by-length", "--class-weight", "none",
                     "--distill-weight", "0.3", "--out-dir", out, "--work-dir", tmp / "work")
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
    run, source_stage = ARMS[arm]
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
    top = np.sort(np.array(source["logits"]), axis=-1)
    assert r["margin_median_all"] == pytest.approx(float(np.median(top[:, -1] - top[:, -2])), abs=1e-6)
    info = run_info(smoke["work"], run)
    assert r["val_f1_macro"] == info["val_f1_macro"] and r["phase_s"] == list(info["phases"].values())[-1]["wall_s"]


def test_arms_share_the_fp32_phase_and_quantize_for_their_target(smoke):
    w = smoke["work"]
    assert smoke["report"]["config"]["settings"] == (["7bit", "8bit"] if VNNI else ["7bit"])
    for setting, target, reduce_range in (("7bit", "portable", True), ("8bit", "vnni", False))[:2 if VNNI else 1]:
        info = run_info(w, f"qat-s7-{setting}")
        assert info["init_from"] == "fp32-s7" and list(info["phases"]) == ["qat"] and info["target_cpu"] == target
        assert info["phases"]["qat"]["distill_weight"] == 0.3  # an option given to the benchmark reaches training
        assert json.loads((w / "models" / f"qat-s7-{setting}" / "quant_config.json").read_text())["reduce_range"] == reduce_range
    ptq7 = json.loads((w / "models" / "fp32-s7" / "quant_config.json").read_text())
    assert ptq7["reduce_range"] and ptq7["target_cpu"] == "portable"
    if VNNI:
        assert not json.loads((w / "models" / "fp32-s7-8bit" / "quant_config.json").read_text())["reduce_range"]
    for run in ("fp32-s7", "qat-s7-7bit"):
        i = run_info(w, run)
        assert i["max_length"] == 24 and i["seed"] == 7 and i["group_by_length"] and i["class_weight"] == "none", run


def test_paired_statistics_recomputed(smoke):
    """Per-seed F1 differences and McNemar's counts from the predictions; the interval contains the observed mean."""
    row, truth = smoke["report"]["per_seed"][0], smoke["test"]["label"].tolist()
    labels = smoke["report"]["info"]["labels"]
    y = np.array(truth)
    for setting, stats in smoke["report"]["paired"].items():
        st = stats["qat_vs_ptq"]
        qat, ptq = np.array(row[f"qat_{setting}"]["predictions"]), np.array(row[f"ptq_{setting}"]["predictions"])
        diff = f1_score(y, qat, labels=labels, average="macro", zero_division=0) - \
            f1_score(y, ptq, labels=labels, average="macro", zero_division=0)
        assert st["f1_diff_per_seed"] == [pytest.approx(diff)]
        assert st["only_a_right"] == [int(((qat == y) & (ptq != y)).sum())]
        assert st["only_b_right"] == [int(((qat != y) & (ptq == y)).sum())]
        lo, hi = st["f1_diff_ci95"]
        assert lo <= diff + 1e-9 and diff - 1e-9 <= hi and all(0 <= p <= 1 for p in st["mcnemar_p"])


def test_paired_interval_separates_a_real_difference():
    """Synthetic predictions: a model right on every row against one wrong on a third of them is 'higher', with a
    tiny McNemar p; two identical models show no difference."""
    from ptq_vs_qat import paired, verdict

    truth = ["a", "b", "c"] * 100
    wrong = [t if i % 3 else {"a": "b", "b": "c", "c": "a"}[t] for i, t in enumerate(truth)]
    rows = [{"good": {"predictions": truth}, "bad": {"predictions": wrong}} for _ in range(3)]
    st = paired(rows, "good", "bad", truth, ["a", "b", "c"], n_boot=200)
    assert st["f1_diff_ci95"][0] > 0 and verdict(st).startswith("higher") and max(st["mcnemar_p"]) < 1e-6
    assert st["only_a_right"] == [100] * 3 and st["only_b_right"] == [0] * 3
    same = paired(rows, "bad", "bad", truth, ["a", "b", "c"], n_boot=200)
    assert same["f1_diff_ci95"] == [0.0, 0.0] and verdict(same).startswith("no difference") and same["mcnemar_p"] == [1.0] * 3


def test_seed_spread_widens_the_interval():
    """Seeds that disagree in sign (one model better in one seed, worse in the other) give an interval that contains
    0, as resampling the seeds must; each seed alone would look clear-cut."""
    from ptq_vs_qat import paired, verdict

    truth = ["a", "b"] * 150
    flip = {"a": "b", "b": "a"}
    half_wrong = [t if i % 2 else flip[t] for i, t in enumerate(truth)]
    rows = [{"x": {"predictions": truth}, "y": {"predictions": half_wrong}},
            {"x": {"predictions": half_wrong}, "y": {"predictions": truth}}]
    st = paired(rows, "x", "y", truth, ["a", "b"], n_boot=300)
    lo, hi = st["f1_diff_ci95"]
    assert lo < 0 < hi and verdict(st).startswith("no difference") and max(st["mcnemar_p"]) < 1e-6


def test_report_generated_and_reading_kept(smoke):
    out = smoke["out"]
    md = (out / "ptq_vs_qat.md").read_text()
    for fragment in ("## Paired differences", "McNemar", "## Targets", "## Training time",
                     "max length 24, plain cross-entropy", "distillation weight 0.3"):
        assert fragment in md, fragment
    assert "[ptq_vs_qat_reading.md](ptq_vs_qat_reading.md)" in md
    assert (out / "ptq_vs_qat_reading.md").read_text() == READING
    assert (out / "ptq_vs_qat.png").stat().st_size > 1000
    assert not Path(smoke["report"]["info"]["data"]).is_absolute()  # no machine's absolute path in a report


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


def test_report_from_files_equals_the_measured_one(smoke, tmp_path):
    """--from-files renders the same per-seed numbers from the runs' files without training anything."""
    cfg = smoke["report"]["config"]
    proc = benchmark("--from-files", "--seeds", "7", "--max-length", "24", "--data-dir", smoke["work"] / "data",
                     "--work-dir", smoke["work"], "--out-dir", tmp_path, "--report-name", "again",
                     "--settings", *cfg["settings"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "again.json").read_text())["per_seed"][0]
    first = smoke["report"]["per_seed"][0]
    drop_times = lambda row: {k: ({kk: vv for kk, vv in v.items() if kk != "train_s"} if isinstance(v, dict) else v)
                              for k, v in row.items()}
    assert drop_times(again) == drop_times(first)
    assert "train_eager_qat.py" not in proc.stdout  # nothing was trained or evaluated


def test_ablations_over_finished_arms(smoke, tmp_path):
    """--from-files --ablations nodistill: trains that ablation only, next to arms read from their files untouched
    (which flags each ablation trains with: test_each_ablation_switches_off_one_piece)."""
    work = tmp_path / "work"
    shutil.copytree(smoke["work"], work)
    arm_model = work / "models" / "qat-s7-7bit" / "model_qat_int8_dynamic.onnx"
    before = arm_model.stat().st_mtime_ns
    proc = benchmark("--from-files", "--seeds", "7", "--max-length", "24", "--data-dir", work / "data", "--work-dir",
                     work, "--out-dir", tmp_path, "--report-name", "abl", "--settings", "7bit", "--ablations",
                     "nodistill")
    # the arms' options, not the defaults: the ablations must differ from them in the piece switched off only
    assert proc.returncode == 1 and "class_weight none (now balanced)" in proc.stderr
    assert "qat phase lr 0.001 (now 3e-05)" in proc.stderr and "data_dir" in proc.stderr
    proc = benchmark(*proc.args, *SMOKE_OPTIONS, "--model", run_info(work, "fp32-s7")["model"], "--data-dir",
                     smoke["work"] / "data")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "abl.json").read_text())
    assert list(report["ablation"]) == ["nodistill"]
    assert report["ablation"]["nodistill"]["f1_macro"] == metrics(work, "qat-s7-7bit-nodistill", "onnx_int8_dynamic")["f1_macro"]
    i = run_info(work, "qat-s7-7bit-nodistill")
    assert i["phases"]["qat"]["distill_weight"] == 0 and i["init_from"] == "fp32-s7"
    assert i["max_length"] == 24 and i["seed"] == 7 and i["group_by_length"] and i["class_weight"] == "none"
    assert arm_model.stat().st_mtime_ns == before and "--run-name qat-s7-7bit --seed" not in proc.stdout
    md = (tmp_path / "abl.md").read_text()
    assert "PTQ of the FP32 phase" in md and "without distillation" in md and "from the pretrained model" not in md


def test_each_ablation_switches_off_one_piece(smoke, monkeypatch):
    """--ablations alone trains every ablation, each with the default recipe's options but its one piece: what
    train_eager_qat.py would get (recorded instead of trained: test_ablations_over_finished_arms trains one)."""
    import common
    import ptq_vs_qat

    monkeypatch.setattr(common, "has_vnni", lambda: True)
    w = smoke["work"]
    runner = ptq_vs_qat.Runner(ptq_vs_qat.parse_args(["--work-dir", str(w), "--model", run_info(w, "fp32-s7")["model"],
                                                       "--data-dir", str(w / "data"), "--ablations", *SMOKE_OPTIONS]))
    trained = {}
    monkeypatch.setattr(runner, "train", lambda run, seed, *flags: trained.update({run: runner.train_argv(run, seed, flags)}))
    monkeypatch.setattr(runner, "deploy", lambda run: runner.metrics("qat-s7-7bit"))
    monkeypatch.setattr(ptq_vs_qat, "training_record", lambda r, run: {})
    out = ptq_vs_qat.run_ablation(runner, 7)
    assert list(out) == ["nodistill", "pretrained", "clip"]
    assert list(trained) == ["qat-s7-7bit-nodistill", "qat-s7-7bit-pretrained", "qat-s7-7bit-clip"]
    nodistill, pretrained = trained["qat-s7-7bit-nodistill"], trained["qat-s7-7bit-pretrained"]
    default = runner.train_argv("qat-s7-7bit", 7, ["--init-from", "fp32-s7", "--target-cpu", "portable"])

    def options(argv) -> dict:  # {option: value, or True for a flag}
        argv = list(map(str, argv))
        return {a: (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True)
                for i, a in enumerate(argv) if a.startswith("--")}

    default = options(default)
    assert default["--distill-weight"] == "0.3" and default["--group-by-length"] is True  # the smoke run's options
    # each ablation: the default recipe's options, the run's name and its one piece aside
    assert options(nodistill) == {**default, "--run-name": "qat-s7-7bit-nodistill", "--distill-weight": "0"}
    assert options(pretrained) == {**{k: v for k, v in default.items() if k != "--init-from"},
                                   "--run-name": "qat-s7-7bit-pretrained", "--recipe": "qat-from-pretrained"}
    assert options(trained["qat-s7-7bit-clip"]) == {**default, "--run-name": "qat-s7-7bit-clip", "--weight-clip": "mse"}
    row = smoke["report"]["per_seed"][0]
    lines = "\n".join(ptq_vs_qat.ablation_lines(row, {key: row["qat_7bit"] for key in out}))
    assert "without distillation" in lines and "from the pretrained model" in lines and "clipped weights" in lines


def test_reuse_keeps_only_runs_trained_as_asked(smoke, monkeypatch, tmp_path):
    """--reuse keeps a run only when it was trained with this seed, data, budget, start run and target CPU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    import ptq_vs_qat

    monkeypatch.setattr(common, "has_vnni", lambda: True)  # parse_args keeps the 8-bit setting on any CPU
    w = smoke["work"]
    base = ["--reuse", "--work-dir", str(w), "--model", run_info(w, "fp32-s7")["model"], "--data-dir",
            str(w / "data"), *SMOKE_OPTIONS]
    qat_flags = ["--init-from", "fp32-s7", "--target-cpu", "portable"]

    def reusable(run, seed, flags, *extra):
        return not ptq_vs_qat.Runner(ptq_vs_qat.parse_args(base + list(extra))).mismatches(run, seed, flags)

    assert reusable("fp32-s7", 7, ["--no-qat", "--target-cpu", "portable"])
    assert reusable("qat-s7-7bit", 7, qat_flags)
    assert not reusable("fp32-s7", 8, ["--no-qat"])  # another seed
    assert not reusable("fp32-s7", 7, ["--no-qat"], "--epochs", "2")  # another FP32 budget
    assert not reusable("qat-s7-7bit", 7, qat_flags, "--qat-lr", "1e-4")  # another QAT budget
    assert not reusable("qat-s7-7bit", 7, qat_flags, "--distill-weight", "0")
    assert not reusable("qat-s7-7bit", 7, ["--init-from", "fp32-s7", "--target-cpu", "vnni"])  # another target
    assert not reusable("qat-s7-7bit", 7, ["--init-from", "fp32-s8", "--target-cpu", "portable"])  # another start
    assert not reusable("qat-s7-7bit", 7, qat_flags, "--max-length", "32")
    assert not reusable("qat-s9-7bit", 9, qat_flags)  # not trained
    assert not reusable("fp32-s7", 7, ["--no-qat"], "--data-dir", str(tmp_path))  # other data
    assert not reusable("qat-s7-7bit", 7, ["--target-cpu", "portable", "--recipe", "qat-from-pretrained"])
    assert not reusable("qat-s7-7bit", 7, qat_flags, "--qat-epochs", "2")
    runner = ptq_vs_qat.Runner(ptq_vs_qat.parse_args(base))
    runner.trained.add("fp32-s7")  # its start retrained by this invocation: the QAT phase is trained again
    calls = []
    monkeypatch.setattr(runner, "step", lambda *a: calls.append(a) or 0.0)
    runner.train("qat-s7-7bit", 7, *qat_flags)
    assert calls and calls[0][0] == "train_eager_qat.py"


def test_weight_clip_goes_to_the_qat_arms_only(tmp_path):
    """--weight-clip mse trains the QAT arms with clipped weights; the FP32 arm (--no-qat, which refuses the option)
    and an ablation that sets the clip itself get it once or not at all."""
    import ptq_vs_qat

    runner = ptq_vs_qat.Runner(ptq_vs_qat.parse_args(["--work-dir", str(tmp_path), "--settings", "7bit",
                                                       "--weight-clip", "mse"]))
    fp32 = runner.train_argv("fp32-s1", 1, ["--no-qat", "--target-cpu", "portable"])
    qat = runner.train_argv("qat-s1-7bit", 1, ["--init-from", "fp32-s1", "--target-cpu", "portable"])
    ablation = runner.train_argv("qat-s1-7bit-clip", 1, ["--init-from", "fp32-s1", "--weight-clip", "mse"])
    assert "--weight-clip" not in fp32
    assert qat[qat.index("--weight-clip") + 1] == "mse" and ablation.count("--weight-clip") == 1
