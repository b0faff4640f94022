"""The tests run pipeline steps forked from tests/step_server.py (helpers.run_step): a forked step must look to the
script and to the test exactly like `python SCRIPT ARGS` from the shell."""

import os
import subprocess
import textwrap
import time

import pytest
from helpers import StepServer, run_step

PROBE = textwrap.dedent('''
    import atexit, json, os, sys
    atexit.register(lambda: print("atexit ran"))
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                      "models": os.environ.get("QAT_MODELS_DIR"), "stdin": sys.stdin.read(),
                      "project_imported": "common" in sys.modules}))
    print("to stderr: é", file=sys.stderr)
    if sys.argv[1] == "raise":
        raise ValueError("boom")
    sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])
''')


@pytest.fixture
def probe(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return script


@pytest.mark.parametrize("arg", ["0", "3", "raise", "a message"])
def test_a_forked_step_is_the_script_run_by_python(probe, tmp_path, monkeypatch, arg):
    env = {**os.environ, "QAT_MODELS_DIR": str(tmp_path / "models")}
    assert StepServer.serves(env)
    forked = run_step(probe, arg, env=env, check=False)
    monkeypatch.setenv("QAT_TEST_FORK", "0")
    plain = run_step(probe, arg, env=env, check=False)
    assert forked.returncode == plain.returncode == {"0": 0, "3": 3}.get(arg, 1)
    assert forked.stdout == plain.stdout and "atexit ran" in forked.stdout
    assert forked.stderr.splitlines()[0] == plain.stderr.splitlines()[0] == "to stderr: é"
    # a traceback names the runner's frames (runpy) before the script's: compare from the script's frame on
    tail = lambda err: err[err.index(f'File "{probe}"'):] if "Traceback" in err else err
    assert tail(forked.stderr) == tail(plain.stderr)


def test_an_environment_the_libraries_read_at_import_gets_a_fresh_interpreter(probe):
    assert not StepServer.serves({**os.environ, "OMP_NUM_THREADS": "7"})
    assert not StepServer.serves({k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"})
    assert StepServer.serves({**os.environ, "QAT_RESULTS_DIR": "/elsewhere", "COLUMNS": "200"})


def test_a_step_past_its_timeout_is_killed_with_its_children(probe, tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                      "print(child.pid, flush=True)\ntime.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_step(script, env=dict(os.environ), timeout=3)
    child = int(e.value.output.split()[0])
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # killed with the step's process group (a zombie until its parent is reaped: gone then)
            os.kill(child, 0)
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                raise ProcessLookupError
            time.sleep(0.1)
    assert run_step(probe, "0", env=dict(os.environ)).returncode == 0  # the server goes on serving
