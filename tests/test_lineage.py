"""Which file each file of a run was made from (lineage.json), stale files and metrics refused or skipped, files of
an earlier training removed by a retrain, run names that do not collide, and the INT8 fidelity gate."""

import argparse
import json
import shutil
import sys

import pytest
from helpers import run_step, run_steps, tiny_workspace, train_tiny

import common
from common import (INT8_FILE, LINEAGE_FILE, ONNX_FILE, QUANT_CONFIG_FILE, STATE_DICT_FILE, PipelineError,
                    file_hashes, record_lineage, remove_downstream, verify_lineage)

# ------------------------------------------------------------------ run names


def test_default_run_names_do_not_collide():
    models = ["indobenchmark/indobert-base-p1", "indobenchmark/indobert-large-p1", "indobenchmark/indobert-lite-base-p1",
              "bert-base-uncased", "bert-large-cased", "bert-base-multilingual-cased", "FacebookAI/xlm-roberta-base",
              "FacebookAI/xlm-roberta-large", "sentence-transformers/all-MiniLM-L6-v2",
              "microsoft/Multilingual-MiniLM-L12-H384", "nreimers/MiniLM-L6-H384-uncased",
              "intfloat/multilingual-e5-small", "default", "minilm"]
    tags = {m: common.model_tag(m) for m in models}
    assert len(set(tags.values())) == len(models), tags
    assert tags["indobenchmark/indobert-base-p1"] == "indobert-base-p1"
    assert tags["bert-base-uncased"] == "bert-base-uncased"
    assert tags["FacebookAI/xlm-roberta-large"] == "xlm-roberta-large"
    assert tags["default"] == "e5-small" and tags["minilm"] == "minilm-l6"


def test_run_name_of_a_local_folder_is_sanitised(tmp_path):
    args = argparse.Namespace(run_name=None, model="/models/My Model (v2)/", data_dir=str(tmp_path / "smsa"))
    assert common.run_name(args) == "my-model-v2-qat-int8-smsa"
    assert common.run_name(argparse.Namespace(run_name="mine", model="x", data_dir=None)) == "mine"


# ------------------------------------------------------------------ lineage records, on plain files


def fake_run(folder):
    """A run folder whose files are plain bytes: lineage is about files, whatever they hold."""
    folder.mkdir(parents=True)
    for name, data in ((STATE_DICT_FILE, b"weights-1"), ("config.json", b"{}"), (QUANT_CONFIG_FILE, b"{\"q\": 1}")):
        (folder / name).write_bytes(data)
    (folder / ONNX_FILE).write_bytes(b"onnx made from weights-1")
    record_lineage(folder, ONNX_FILE, file_hashes(folder, [STATE_DICT_FILE, "config.json"]))
    (folder / INT8_FILE).write_bytes(b"int8 made from that onnx")
    record_lineage(folder, INT8_FILE, file_hashes(folder, [ONNX_FILE, QUANT_CONFIG_FILE]))
    return folder


def test_chain_of_a_consistent_run(tmp_path):
    run = fake_run(tmp_path / "run")
    chain = verify_lineage(run, INT8_FILE)
    assert set(chain) == {INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, STATE_DICT_FILE, "config.json"}
    assert chain[STATE_DICT_FILE] == common.sha256_file(run / STATE_DICT_FILE)


def test_retrained_weights_make_both_models_stale(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / STATE_DICT_FILE).write_bytes(b"weights-2")
    for artifact in (ONNX_FILE, INT8_FILE):  # the earliest step to re-run is the export, for both
        with pytest.raises(PipelineError, match=r"model_qat\.onnx is stale.*model_qat\.pth.*export_to_onnx\.py"):
            verify_lineage(run, artifact)


@pytest.mark.parametrize("change, fragments", [
    ((QUANT_CONFIG_FILE, b"{\"q\": 2}"), ["model_qat_int8_dynamic.onnx is stale", "quant_config.json",
                                          "quantize_onnx_dynamic.py"]),
    (("config.json", b"{\"id2label\": {}}"), ["model_qat.onnx is stale", "config.json", "export_to_onnx.py"]),
    ((INT8_FILE, b"another int8"), ["is not the file quantize_onnx_dynamic.py recorded"]),
    ((ONNX_FILE, b"re-exported"), ["model_qat.onnx is not the file export_to_onnx.py recorded"]),
])
def test_each_link_is_checked(tmp_path, change, fragments):
    run = fake_run(tmp_path / "run")
    (run / change[0]).write_bytes(change[1])
    with pytest.raises(PipelineError) as e:
        verify_lineage(run, INT8_FILE)
    for f in fragments:
        assert f in str(e.value)
    assert "\n" not in str(e.value)


def test_reexport_without_requantizing_is_stale(tmp_path):
    """A new ONNX recorded by export: the ONNX is fine, the INT8 made from the old one is not."""
    run = fake_run(tmp_path / "run")
    (run / ONNX_FILE).write_bytes(b"re-exported")
    record_lineage(run, ONNX_FILE, file_hashes(run, [STATE_DICT_FILE, "config.json"]))
    verify_lineage(run, ONNX_FILE)
    with pytest.raises(PipelineError, match=r"int8_dynamic\.onnx is stale.*model_qat\.onnx.*quantize_onnx_dynamic"):
        verify_lineage(run, INT8_FILE)


def test_unrecorded_or_corrupt_lineage_is_refused(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / LINEAGE_FILE).unlink()
    with pytest.raises(PipelineError, match="no record in .*lineage.json.*quantize_onnx_dynamic.py"):
        verify_lineage(run, INT8_FILE)
    (run / LINEAGE_FILE).write_text("{not json")
    with pytest.raises(PipelineError, match="lineage.json is corrupt"):
        verify_lineage(run, INT8_FILE)


def test_deployed_copy_without_upstream_files(tmp_path):
    """A server copy holds the INT8 model, config and tokenizer only: what is there is still checked."""
    run = fake_run(tmp_path / "run")
    for name in (STATE_DICT_FILE, ONNX_FILE):
        (run / name).unlink()
    assert INT8_FILE in verify_lineage(run, INT8_FILE)
    (run / "config.json").write_text('{"id2label": {"0": "other"}}')
    with pytest.raises(PipelineError, match="model_qat.onnx is stale.*config.json"):
        verify_lineage(run, INT8_FILE)


def test_rewritten_file_is_hashed_again(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = common.sha256_file(path)
    assert common.sha256_file(path) == first
    tmp = tmp_path / "g"
    tmp.write_bytes(b"two")
    tmp.replace(path)  # how every output is written (atomic_output)
    assert common.sha256_file(path) != first


def test_remove_downstream(tmp_path):
    run = fake_run(tmp_path / "run")
    results = tmp_path / "results"
    results.mkdir()
    for name in ("metrics_eager_qat.json", "confusion_matrix_eager_qat.png", "training_curve.png", "notes.txt"):
        (results / name).write_text("x")
    (run / "README.md").write_text("model card of the earlier training")
    removed = {p.name for p in remove_downstream(run, results)}
    assert removed == {ONNX_FILE, INT8_FILE, LINEAGE_FILE, "README.md", "metrics_eager_qat.json",
                       "confusion_matrix_eager_qat.png", "training_curve.png"}
    assert sorted(p.name for p in run.iterdir()) == sorted([STATE_DICT_FILE, "config.json", QUANT_CONFIG_FILE])
    assert [p.name for p in results.iterdir()] == ["notes.txt"]


def test_atomic_files_replace_the_folder_whole(tmp_path):
    """A retrain's files replace the run folder whole: no file of the earlier training stays beside them; a failure
    inside the block leaves the earlier folder untouched and no temporary folder."""
    from common import atomic_files

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model_qat.pth", "config.json", "old-only.txt"):
        (run / name).write_text(f"old {name}")
    with pytest.raises(RuntimeError):
        with atomic_files(run) as tmp:
            (tmp / "model_qat.pth").write_text("new weights")
            raise RuntimeError("training crashed")
    assert {p.name: p.read_text() for p in run.iterdir()} == {n: f"old {n}" for n in ("model_qat.pth", "config.json",
                                                                                         "old-only.txt")}
    with atomic_files(run) as tmp:
        (tmp / "model_qat.pth").write_text("new weights")
        (tmp / "config.json").write_text("new config")
    assert {p.name: p.read_text() for p in run.iterdir()} == {"model_qat.pth": "new weights", "config.json": "new config"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_benchmark_report_is_written_whole_or_not_at_all(tmp_path):
    """A benchmark whose results JSON cannot hold (a numpy scalar left in) writes neither file and leaves no
    temporary one, so an earlier report pair stays as it was; a good pair replaces both files."""
    import numpy as np

    from common import save_report

    out = tmp_path / "reports"
    save_report(out, "r", {"f1": 80.0}, "# first\n\n| a |")
    with pytest.raises(TypeError):
        save_report(out, "r", {"f1": np.float32(81.0)}, "# second")
    assert sorted(p.name for p in out.iterdir()) == ["r.json", "r.md"]
    assert json.loads((out / "r.json").read_text()) == {"f1": 80.0}
    assert (out / "r.md").read_text() == "# first\n\n| a |\n"
    assert save_report(out, "r", {"f1": 82.0}, "# third\n\n") == out / "r.md"
    assert (out / "r.md").read_text() == "# third\n" and json.loads((out / "r.json").read_text()) == {"f1": 82.0}


# ------------------------------------------------------------------ agreement only with metrics of the same lineage


def write_metrics(folder, stage, lineage, predictions, data_sha256="d"):
    m = {"stage": stage, "n_samples": len(predictions), "batch_size": 32, "predictions": predictions,
         "logits": [[0.0, 1.0]] * len(predictions), "data_sha256": data_sha256}
    if lineage is not None:
        m["lineage"] = lineage
    (folder / f"metrics_{stage}.json").write_text(json.dumps(m))


def test_agreement_skips_stale_metrics(tmp_path):
    from evaluation import compare_with_other_stages

    current = {INT8_FILE: "i1", ONNX_FILE: "o1", STATE_DICT_FILE: "w2", "config.json": "c", QUANT_CONFIG_FILE: "q"}
    write_metrics(tmp_path, "eager_qat", {STATE_DICT_FILE: "w1", "config.json": "c", QUANT_CONFIG_FILE: "q"},
                  ["a", "b"])  # measured before a retrain
    write_metrics(tmp_path, "onnx_qat", {ONNX_FILE: "o1", STATE_DICT_FILE: "w2", "config.json": "c"}, ["a", "a"])
    write_metrics(tmp_path, "eager_fp32", None, ["a", "b"])  # written before lineage existed
    write_metrics(tmp_path, "onnx_qat_per_text", {ONNX_FILE: "o1", STATE_DICT_FILE: "w2", "config.json": "c"},
                  ["b", "a"], data_sha256="other")  # the same number of rows of another test.csv
    metrics = {"stage": "onnx_int8_dynamic", "n_samples": 2, "batch_size": 32, "predictions": ["a", "b"],
               "logits": [[0.0, 1.0]] * 2, "lineage": current, "data_sha256": "d"}
    agreement, skipped = compare_with_other_stages(tmp_path, "onnx_int8_dynamic", metrics)
    assert set(agreement) == {"onnx_qat"} and agreement["onnx_qat"]["agreement"] == 0.5
    assert "another test.csv" in skipped["onnx_qat_per_text"]
    assert agreement["onnx_qat"]["lineage"][ONNX_FILE] == "o1"
    assert "stale" in skipped["eager_qat"] and STATE_DICT_FILE in skipped["eager_qat"]
    assert "eval_eager_qat.py" in skipped["eager_qat"]
    assert "no lineage record" in skipped["eager_fp32"]


# ------------------------------------------------------------------ the pipeline on a tiny BERT: retrain, stale files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("lineage"))


@pytest.fixture(scope="module")
def first_training(workspace):
    """Train, export, quantize, evaluate; keep a copy of the run's files and results as they were."""
    w = workspace
    train_tiny(w, "lin", "--epochs", 1, "--max-train-samples", 200)
    out = run_steps("lin", "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_eager_qat.py",
                    "eval_onnx_int8_dynamic.py", env=w["env"])
    run, results, old = w["tmp"] / "models" / "lin", w["tmp"] / "results" / "lin", w["tmp"] / "first"
    shutil.copytree(run, old / "models")
    shutil.copytree(results, old / "results")
    return {**w, "run": run, "results": results, "old": old, "out": out}


@pytest.fixture(scope="module")
def retrained(first_training):
    """The same run trained again with another seed: other weights, same name."""
    w = first_training
    proc = run_step("train_eager_qat.py", "--model", w["model"], "--data-dir", w["data"], "--run-name", "lin",
                    "--max-length", 48, "--lr", "2e-3", "--batch-size", 16, "--epochs", 1, "--qat-epochs", 1, "--max-train-samples",
                    200, "--seed", 7, env=w["env"])
    return {**w, "retrain_out": proc.stdout}


def test_lineage_recorded_by_the_steps(first_training):
    run = first_training["run"]
    records = json.loads((run / LINEAGE_FILE).read_text())
    assert records[ONNX_FILE]["made_from"] == file_hashes(run, [STATE_DICT_FILE, "config.json"])
    assert records[INT8_FILE]["made_from"] == file_hashes(run, [ONNX_FILE, QUANT_CONFIG_FILE])
    m = json.loads((first_training["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    assert m["lineage"] == verify_lineage(run, INT8_FILE)
    assert m["agreement"]["eager_qat"]["lineage"][STATE_DICT_FILE] == m["lineage"][STATE_DICT_FILE]


def test_retrain_removes_what_the_earlier_training_made(retrained):
    run, results = retrained["run"], retrained["results"]
    assert (run / STATE_DICT_FILE).read_bytes() != (retrained["old"] / "models" / STATE_DICT_FILE).read_bytes()
    for name in (ONNX_FILE, INT8_FILE, LINEAGE_FILE):
        assert not (run / name).exists(), name
        assert name in retrained["retrain_out"]
    assert not list(results.glob("metrics_*.json")) and not list(results.glob("confusion_matrix_*.png"))
    assert "removed what its earlier training" in retrained["retrain_out"]


def stale_clone(w, name):
    """The retrained run with the ONNX, INT8 and lineage of the first training put back, as a pipeline without
    lineage (or a copy by hand) leaves them."""
    clone = w["tmp"] / "models" / name
    shutil.copytree(w["run"], clone)
    for f in (ONNX_FILE, INT8_FILE, LINEAGE_FILE):
        shutil.copy(w["old"] / "models" / f, clone / f)
    return clone


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for f in fragments:
        assert f in err[-1], (f, err[-1])


def test_models_of_an_earlier_training_are_refused(retrained):
    from predictor import Predictor

    clone = stale_clone(retrained, "stale")
    env = retrained["env"]
    for script in ("eval_onnx_int8_dynamic.py", "eval_onnx_qat.py", "quantize_onnx_dynamic.py"):
        proc = run_step(script, "--run-name", "stale", env=env, check=False)
        assert_one_line_error(proc, "model_qat.onnx is stale", "model_qat.pth", "export_to_onnx.py")
    assert not (retrained["tmp"] / "results" / "stale").exists()  # nothing was evaluated
    with pytest.raises(PipelineError, match="model_qat.onnx is stale"):
        Predictor(clone, threads=1)
    (clone / LINEAGE_FILE).unlink()  # no record at all: refused too
    proc = run_step("eval_onnx_int8_dynamic.py", "--run-name", "stale", env=env, check=False)
    assert_one_line_error(proc, "has no record", "quantize_onnx_dynamic.py")


def test_stale_metrics_are_not_compared(retrained):
    w = retrained
    run_steps("lin", "export_to_onnx.py", "quantize_onnx_dynamic.py", env=w["env"])
    shutil.copy(w["old"] / "results" / "metrics_eager_qat.json", w["results"])  # measured on the first weights
    out = run_step("eval_onnx_int8_dynamic.py", "--run-name", "lin", env=w["env"]).stdout
    m = json.loads((w["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    assert "eager_qat" not in m["agreement"]
    assert "stale" in m["agreement_skipped"]["eager_qat"] and "not compared with eager_qat: stale" in out
    run_step("eval_eager_qat.py", "--run-name", "lin", env=w["env"])  # measured again: compared again
    m = json.loads((w["results"] / "metrics_eager_qat.json").read_text())
    assert m["agreement"]["onnx_int8_dynamic"]["agreement"] == 1.0 and not m["agreement_skipped"]


# ------------------------------------------------------------------ the fidelity gate when quantizing


def test_gate_passes_and_is_recorded(first_training):
    out = first_training["out"]["quantize_onnx_dynamic.py"]
    assert "fidelity on 129 validation rows" in out and "INT8 vs the simulation (eager_qat): labels agree on 100.00%" in out
    gate = json.loads((first_training["old"] / "models" / LINEAGE_FILE).read_text())[INT8_FILE]["fidelity"]
    assert gate["gated"] and gate["rows"] == 129 and gate["vs_simulation"]["agreement"] == 1.0
    assert gate["vs_simulation"]["max_abs_logit_diff"] <= 1e-5 and gate["rel_logit_diff"] < 0.01
    assert gate["simulated_quantization_effect"] > 0 and gate["vs_fp32"]["max_abs_logit_diff"] > 0


def quantize_in_process(monkeypatch, w, run_name, *argv):
    import quantize_onnx_dynamic

    monkeypatch.setattr(common, "MODELS_DIR", w["tmp"] / "models")
    monkeypatch.setattr(sys, "argv", ["quantize_onnx_dynamic.py", "--run-name", run_name, "--threads", "1", *argv])
    return quantize_onnx_dynamic


def test_gate_refuses_an_onnx_runtime_that_drifted(first_training, monkeypatch):
    """ONNX Runtime quantizing the weights to another range than quant_sim.py simulates (reduce_range flipped in
    what quantize_dynamic is asked to do, the simulation unchanged): the INT8 model is not written."""
    import dataclasses

    w = first_training
    clone = w["tmp"] / "models" / "drift"
    shutil.copytree(w["old"] / "models", clone)
    (clone / INT8_FILE).unlink()
    lineage_before = (clone / LINEAGE_FILE).read_text()
    q = quantize_in_process(monkeypatch, w, "drift")
    real_quantize = q.quantize
    monkeypatch.setattr(q, "quantize", lambda fp32, out, qcfg, cfg: real_quantize(
        fp32, out, dataclasses.replace(qcfg, reduce_range=not qcfg.reduce_range), cfg))
    with pytest.raises(PipelineError) as e:
        q.main()
    msg = str(e.value)
    assert "does not compute what training simulated" in msg and "INT8 model not written" in msg and "\n" not in msg
    assert "--max-rel-logit-diff 0.6" in msg  # caught by the default threshold
    assert not (clone / INT8_FILE).exists() and not list(clone.glob("*.partial"))
    assert (clone / LINEAGE_FILE).read_text() == lineage_before


def test_quantize_uses_the_settings_it_read_once(first_training, monkeypatch):
    """quant_config.json replaced after the step loaded the run (another --target-cpu trained into the folder): the
    step quantizes with the settings it read and, finding the file changed, writes no INT8 model rather than record
    settings it did not use."""
    w = first_training
    clone = w["tmp"] / "models" / "moved"
    shutil.copytree(w["old"] / "models", clone)
    (clone / INT8_FILE).unlink()
    q = quantize_in_process(monkeypatch, w, "moved", "--gate-rows", "0")
    real_load_run = q.load_run

    def load_then_replace(args):
        run = real_load_run(args)
        cfg = json.loads((clone / QUANT_CONFIG_FILE).read_text())
        (clone / QUANT_CONFIG_FILE).write_text(json.dumps({**cfg, "reduce_range": not cfg["reduce_range"]}))
        return run

    monkeypatch.setattr(q, "load_run", load_then_replace)
    with pytest.raises(PipelineError, match="quant_config.json in .* changed while this step read it"):
        q.main()
    assert not (clone / INT8_FILE).exists() and not list(clone.glob("*.partial"))


def test_unreadable_quant_config_is_one_line(first_training):
    """A quant_config.json with a setting this code does not know (edited by hand, or written by another version):
    quantize and the eager evaluation refuse it in one line naming the file, and no INT8 model is written."""
    w = first_training
    clone = w["tmp"] / "models" / "unknown-key"
    shutil.copytree(w["old"] / "models", clone)
    (clone / INT8_FILE).unlink()
    cfg = json.loads((clone / QUANT_CONFIG_FILE).read_text())
    (clone / QUANT_CONFIG_FILE).write_text(json.dumps({**cfg, "bits": 4}))
    for script in ("quantize_onnx_dynamic.py", "eval_eager_qat.py"):
        proc = run_step(script, "--run-name", "unknown-key", env=w["env"], check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
        assert f"{QUANT_CONFIG_FILE} holds settings this code cannot read" in proc.stderr and "'bits'" in proc.stderr
    assert not (clone / INT8_FILE).exists()


def test_ptq_run_is_not_gated(first_training, monkeypatch, capsys):
    """A --no-qat run has no simulation: INT8 differs from the FP32 model, and that is reported, not refused."""
    w = first_training
    clone = w["tmp"] / "models" / "ptq"
    shutil.copytree(w["old"] / "models", clone)
    cfg = json.loads((clone / QUANT_CONFIG_FILE).read_text())
    cfg["qat"] = False
    (clone / QUANT_CONFIG_FILE).write_text(json.dumps(cfg))
    q = quantize_in_process(monkeypatch, w, "ptq", "--max-rel-logit-diff", "0", "--min-agreement", "1")
    q.main()
    assert "no simulation to match: for information" in capsys.readouterr().out
    gate = json.loads((clone / LINEAGE_FILE).read_text())[INT8_FILE]["fidelity"]
    assert not gate["gated"] and "vs_simulation" not in gate and gate["vs_fp32"]["max_abs_logit_diff"] > 0
    verify_lineage(clone, INT8_FILE)
