"""Every example of README.md and README_DEPLOYMENT.md runs as written, from the repository root, on a tiny run that
carries the docs' run name (e5-small-qat-int8-combined) and the default data in combined/. The few examples that
need the network, a cluster or the full-size model are listed in NOT_RUN with the reason; a new example must run
here or be listed there. Catches an example left behind by a renamed option, file, column or function."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import ROOT, run_step, run_steps, tiny_workspace, train_tiny
from test_docs import DOCS, FENCE, text

RUN = "e5-small-qat-int8-combined"
# First line of an example -> why the test does not run it.
NOT_RUN = {
    "bash run_pipeline.sh": "trains the full-size default model (minutes to hours); the steps it runs are run here",
    "bash run_pipeline.sh --data-dir my_data": "the user's own folder and the full-size model",
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": "needs the package registries",
    "python train_eager_qat.py --model indobenchmark/indobert-base-p1 --data-dir combined": "needs the model hub",
    "spark-submit --master spark://head:7077 predict.py --engine spark --run-name e5-small-qat-int8-combined \\":
        "needs a Spark cluster and HDFS",
}
SERVER = "python serve.py"


def first_line(code: str) -> str:
    """An example's first line without its comment."""
    return code.splitlines()[0].split("  #")[0].strip()


def examples(doc):
    return [(lang, code) for lang, code in FENCE.findall(text(doc)) if lang in ("bash", "python")]


def install_is_current() -> bool:
    """scripts/setup_env.sh would install nothing (its stamp matches the requirement files): running it offline is
    then as written."""
    want = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in ("requirements.txt", "requirements-nodeps.txt")))
    stamp = ROOT / ".venv" / ".requirements.sha"
    return stamp.is_file() and stamp.read_text().strip() == want.hexdigest() and shutil.which("java") is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    w = tiny_workspace(tmp_path_factory.mktemp("docs"))
    train_tiny(w, RUN, "--epochs", 1)
    run_steps(RUN, "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_onnx_int8_dynamic.py", env=w["env"])
    run_step("eval_onnx_int8_dynamic.py", "--run-name", RUN, "--per-text", env=w["env"])
    return w


def repository_root(w, name):
    """A folder that looks like the repository root: its files and folders linked, with combined/ (the default data),
    models/ and results/ of the tiny workspace."""
    root = w["tmp"] / name
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("models", "results", "combined", ".git") and not entry.name.startswith(".pytest"):
            (root / entry.name).symlink_to(entry)
    (root / "combined").symlink_to(w["data"])
    for sub in ("models", "results"):
        (root / sub).symlink_to(w["tmp"] / sub)
    env = {**w["env"], "QAT_DEFAULT_DATA_DIR": str(w["data"]), "VIRTUAL_ENV": str(ROOT / ".venv"),
           "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    return root, env


def run_example(lang, code, root, env):
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return proc.stdout


def wait_for(url, server, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert server.poll() is None, f"the server exited:\n{server.stdout.read()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.parametrize("doc", DOCS)
def test_every_example_runs_as_written(doc, tiny_run):
    root, env = repository_root(tiny_run, doc.replace(".", "_"))
    blocks, ran, server = examples(doc), [], None
    for lang, code in blocks:
        first = first_line(code)
        if first in NOT_RUN:
            continue
        if first.startswith("bash scripts/setup_env.sh") and not install_is_current():
            continue  # it would install (network): skipped where the environment is not the one it made
        if "spark" in code and shutil.which("java") is None:
            continue
        if first.startswith(SERVER):
            server = subprocess.Popen(["bash", "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
            wait_for("http://127.0.0.1:8000/health", server)
            continue
        try:
            out = run_example(lang, code, root, env)
        finally:
            if server is not None:  # the example after the server's runs "from another shell"
                os.killpg(server.pid, 15)
                server.wait(timeout=60)
                server = None
        ran.append((first, out))
    assert ran, f"{doc}: no example ran"
    outputs = "\n".join(out for _, out in ran)
    if doc == "README_DEPLOYMENT.md":
        assert '"predictions"' in outputs and "serve_texts_scored_total" in outputs
        assert (root / "scored.csv").is_file() and (root / "scored.jsonl").is_file()
    else:
        assert (root / "scored.csv").is_file() and '"predictions"' in outputs


def test_every_example_not_run_is_in_the_docs():
    """NOT_RUN lists only examples the READMEs have (a stale entry would hide nothing, but would mislead)."""
    firsts = {first_line(code) for doc in DOCS for _, code in examples(doc)}
    assert set(NOT_RUN) <= firsts, sorted(set(NOT_RUN) - firsts)
