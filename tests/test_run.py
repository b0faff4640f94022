"""The run object: read once, the user's settings override the run's in it (never in the parsed arguments), and an
evaluation on other data neither replaces nor is compared with the run's own metrics."""

import argparse
import json
import shutil

import pandas as pd
import pytest
from helpers import run_step

from common import PipelineError
from run import Run, load_run


def write_run(folder, labels=("negative", "positive"), info_labels=None, data_dir="data"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"id2label": {str(i): l for i, l in enumerate(labels)}}))
    (folder / "quant_config.json").write_text(json.dumps({"weight_type": "int8", "reduce_range": True}))
    (folder / "run_info.json").write_text(json.dumps({
        "labels": list(info_labels or labels), "input_names": ["input_ids", "attention_mask"], "max_length": 64,
        "data_dir": str(data_dir), "text_column": "text", "label_column": "label"}))
    return folder


def test_run_settings_and_overrides(tmp_path):
    folder = write_run(tmp_path / "r", data_dir=tmp_path / "data")
    run = Run.load(folder)
    assert run.labels == ("negative", "positive") and run.max_length == 64 and run.input_names[0] == "input_ids"
    assert run.own_data and run.quant["reduce_range"] and run.name == "r"
    assert Run.load(folder, max_length=32, text_column=None).max_length == 32
    assert Run.load(folder, text_column=None).text_column == "text"  # None: not given, the run's stays
    with pytest.raises(PipelineError, match="--max-length 0"):
        Run.load(folder, max_length=0)


def test_inconsistent_or_corrupt_runs_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="differ from run_info.json labels"):
        Run.load(write_run(tmp_path / "a", info_labels=("neg", "pos")))
    corrupt = write_run(tmp_path / "b")
    (corrupt / "run_info.json").write_text("{not json")
    with pytest.raises(PipelineError, match="corrupt") as e:
        Run.load(corrupt)
    assert "\n" not in str(e.value)
    with pytest.raises(PipelineError, match="not found"):
        Run.load(tmp_path / "missing")


def test_load_run_leaves_the_arguments_as_parsed(tmp_path, monkeypatch):
    import run as run_module

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.csv").write_text("text,label\nbagus,positive\n")
    monkeypatch.setattr(run_module, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(run_module, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr("common.MODELS_DIR", tmp_path / "models")
    write_run(tmp_path / "models" / "r", data_dir=tmp_path / "train-data")
    args = argparse.Namespace(run_name="r", model="default", data_dir=str(data), text_column=None, label_column=None,
                              max_length=None)
    before = vars(args).copy()
    run = load_run(args)
    assert vars(args) == before  # nothing filled into the parsed arguments
    assert run.data_dir == str(data) and run.max_length == 64 and not run.own_data
    assert run.results_dir.parent == tmp_path / "results" / "r" and run.results_dir.name.startswith("on-data-")


@pytest.mark.slow
def test_evaluation_on_other_data_keeps_the_runs_metrics(tmp_path_factory):
    """eval_onnx_int8_dynamic.py --data-dir OTHER with as many test rows: the run's metrics stay as they were, the
    new ones go beside them and are compared only with stages measured on the same file."""
    from helpers import run_steps, tiny_workspace, train_tiny

    w = tiny_workspace(tmp_path_factory.mktemp("otherdata"))
    train_tiny(w, "r", "--recipe", "qat-from-pretrained", "--epochs", 1, "--max-train-samples", 200)
    run_steps("r", "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_eager_qat.py", "eval_onnx_int8_dynamic.py",
              env=w["env"])
    results = w["tmp"] / "results" / "r"
    own = (results / "metrics_onnx_int8_dynamic.json").read_bytes()
    other = w["tmp"] / "other"
    shutil.copytree(w["data"], other)
    test = pd.read_csv(other / "test.csv")
    test.iloc[::-1].to_csv(other / "test.csv", index=False)  # the same number of rows, in another order
    out = run_step("eval_onnx_int8_dynamic.py", "--run-name", "r", "--data-dir", other, "--latency-samples", 0,
                   env=w["env"]).stdout
    assert (results / "metrics_onnx_int8_dynamic.json").read_bytes() == own
    [folder] = [p for p in results.iterdir() if p.is_dir()]
    m = json.loads((folder / "metrics_onnx_int8_dynamic.json").read_text())
    assert m["agreement"] == {} and "agreement with eager_qat" not in out
    assert m["n_samples"] == len(test) and m["data"] == str(other / "test.csv")
    # the run's own metrics are compared only with stages on the same test file
    own_m = json.loads(own)
    assert set(own_m["agreement"]) == {"eager_qat"} and own_m["data_sha256"]
