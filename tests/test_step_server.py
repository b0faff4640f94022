"""The tests run pipeline steps forked from tests/step_server.py (helpers.run_step): a forked step must look to the
script and to the test exactly like `python SCRIPT ARGS` from the shell."""

import json
import os
import subprocess
import textwrap
import time

import pytest
from helpers import StepServer, run_step

PROBE = textwrap.dedent('''
    import atexit, json, os, pickle, random, sys
    import numpy as np

    def handler():
        pickle.dumps(handler)  # __main__ is still the script at exit
        print("atexit ran")

    atexit.register(handler)
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                      "models": os.environ.get("QAT_MODELS_DIR"), "stdin": sys.stdin.read(),
                      "project_imported": "common" in sys.modules}))
    print(json.dumps({"parent": os.getppid(), "random": [random.random(), float(np.random.rand())]}))
    print("to stderr: é", file=sys.stderr)
    if sys.argv[1] == "raise":
        raise ValueError("boom")
    sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
''')


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    monkeypatch.delenv("QAT_TEST_FORK", raising=False)  # these tests are about the forked steps


@pytest.fixture
def probe(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return script


def outputs(proc):
    lines = proc.stdout.splitlines()
    return lines[0], json.loads(lines[1]), lines[2:]



@pytest.mark.parametrize("arg", ["0", "3", "raise", "a message"])
def test_a_forked_step_is_the_script_run_by_python(probe, tmp_path, monkeypatch, arg):
    env = {**os.environ, "QAT_MODELS_DIR": str(tmp_path / "models")}
    assert StepServer.serves(env)
    forked = run_step(probe, arg, env=env, check=False)
    monkeypatch.setenv("QAT_TEST_FORK", "0")
    plain = run_step(probe, arg, env=env, check=False)
    assert forked.returncode == plain.returncode == {"0": 0, "3": 3}.get(arg, 1)
    (f_first, f_proc, f_rest), (p_first, p_proc, p_rest) = outputs(forked), outputs(plain)
    assert f_first == p_first and f_rest == p_rest == ["atexit ran"]
    assert f_proc["parent"] == StepServer._proc.pid and p_proc["parent"] == os.getpid()  # each went its own way
    assert forked.stderr.splitlines()[0] == plain.stderr.splitlines()[0] == "to stderr: é"
    # a traceback names the runner's frame before the script's: compare from the script's frame on
    tail = lambda err: err[err.index(f'File "{probe}"'):] if "Traceback" in err else err
    assert tail(forked.stderr) == tail(plain.stderr)


def test_forked_steps_do_not_share_unseeded_random_state(probe):
    draws = [outputs(run_step(probe, "0", env=dict(os.environ)))[1]["random"] for _ in range(2)]
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]


def test_an_environment_the_libraries_read_at_import_gets_a_fresh_interpreter(probe):
    assert StepServer.serves({**os.environ, "QAT_RESULTS_DIR": "/elsewhere", "COLUMNS": "200"})
    assert not StepServer.serves({k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"})
    env = {**os.environ, "OMP_NUM_THREADS": "7"}
    assert not StepServer.serves(env)
    assert outputs(run_step(probe, "0", env=env))[1]["parent"] == os.getpid()


def test_a_variable_the_zygotes_imports_set_does_not_stop_forking(probe, monkeypatch):
    """Importing a library in the test process may add a variable to its environment (transformers' Trainer sets
    TORCHINDUCTOR_CACHE_DIR); the zygote's imports set the same, so the step is still forked."""
    key = "TORCHINDUCTOR_CACHE_DIR"
    monkeypatch.delenv(key, raising=False)
    if StepServer.running():  # a zygote started without it
        StepServer._proc.kill()
        StepServer._proc.wait()
    run_step(probe, "0", env=dict(os.environ))
    value = StepServer._set_by_imports[key]
    assert StepServer.serves({**os.environ, key: value})
    assert not StepServer.serves({**os.environ, key: value + "-other"})


def test_a_step_past_its_timeout_is_killed_with_its_children(probe, tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                      "print(child.pid, flush=True)\ntime.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_step(script, env=dict(os.environ), timeout=3)
    child = int(e.value.output.split()[0])
    try:
        with pytest.raises(ProcessLookupError):
            for _ in range(50):  # killed with the step's process group (a zombie until reaped: gone then)
                os.kill(child, 0)
                if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                    raise ProcessLookupError
                time.sleep(0.1)
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass
    assert run_step(probe, "0", env=dict(os.environ)).returncode == 0  # the server goes on serving
