"""Training spread over processes as the guide says (`torchrun --nproc_per_node N train_eager_qat.py`), here two
CPU ranks on the gloo backend, and the default data set prepared once when several processes start together."""

import json
import subprocess
import sys
import threading

import pandas as pd
import pytest
from helpers import ROOT, tiny_workspace

PREPARING = "preparing the default data set"


def test_concurrent_callers_prepare_the_default_data_once(tmp_path, monkeypatch, capsys):
    """Four callers released at the same instant on an empty default folder: one prepares, the others wait for it
    and then use its CSVs (without the lock they all see no CSVs and prepare, or fail on each other's files)."""
    import prepare_data

    default = tmp_path / "combined"
    monkeypatch.setattr(prepare_data, "DEFAULT_DATA_DIR", default)
    start, errors = threading.Barrier(4), []

    def caller():
        start.wait()
        try:
            prepare_data.ensure_default_data(default)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert capsys.readouterr().out.count(PREPARING) == 1
    assert sorted(p.name for p in default.iterdir()) == ["test.csv", "train.csv", "val.csv"]  # no lock or partial left
    assert sum(len(pd.read_csv(default / f"{s}.csv")) for s in ("train", "val", "test")) > 1000


def test_user_csvs_in_the_default_folder_are_left_alone(tmp_path, monkeypatch, capsys):
    import prepare_data

    monkeypatch.setattr(prepare_data, "DEFAULT_DATA_DIR", tmp_path)
    (tmp_path / "train.csv").write_text("text,label\nmine,a\n")
    prepare_data.ensure_default_data(tmp_path)
    assert PREPARING not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(tmp_path):
    """Two ranks start on an empty default data folder: exactly one prepares it; the run trains with both ranks
    and rank 0 alone writes a loadable model and a run_info.json that records the world size."""
    from common import load_run_model

    w = tiny_workspace(tmp_path)  # the tiny model (its vocabulary comes from a data set prepared elsewhere)
    default = tmp_path / "default-data"
    env = {**w["env"], "QAT_DEFAULT_DATA_DIR": str(default), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_eager_qat.py"), "--model", str(w["model"]), "--run-name", "ddp", "--max-length", "32",
           "--batch-size", "16", "--epochs", "1", "--qat-epochs", "1", "--lr", "2e-3", "--max-train-samples", "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    assert out.count(PREPARING) == 1, out[-4000:]
    assert sorted(p.name for p in default.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    run = tmp_path / "models" / "ddp"
    assert out.count(f"wrote {default}") == 3  # the three CSVs, by the one preparing rank
    assert out.count(f"wrote {run}/") == 1  # the run's files, by rank 0 only
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no checkpoints or partials left
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["data_dir"] == str(default.resolve())
    model = load_run_model(run)
    assert model.config.id2label == {0: "negative", 1: "positive"}
