"""A zygote for the tests' pipeline steps: it imports the heavy libraries once, then runs each requested script in a
forked child, as `python SCRIPT ARGS` would (its own process, argv, environment, working directory, exit status,
stdout and stderr), without paying 3-6 s of Python start and torch/transformers/onnxruntime imports per step.

Protocol (one JSON object per line): stdin gets {"script", "args", "env", "cwd", "timeout", "stdout", "stderr"} (the
last two: files the child writes), stdout answers {"returncode"} (negative: killed by that signal; null: timed out,
then the child's process group was killed). Only libraries are imported here, never the repository's modules, so
each step imports and initialises the project's code itself; a step whose environment differs from this process's
in what the libraries read at import is run by the caller as a plain subprocess (helpers.run_step).
"""

import json
import os
import runpy
import signal
import sys
import time
import traceback


def preload() -> None:
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer  # noqa: F401


def run_child(req: dict) -> None:
    """In the forked child: become `python script args` and exit as it would."""
    os.setpgid(0, 0)  # the parent kills the whole group on a timeout (a step's own children included)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    script = req["script"]
    sys.argv = [script, *req["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` sets it
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # what the interpreter does with it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_like_the_interpreter(code)


def exit_like_the_interpreter(code: int) -> None:
    """What Python's shutdown does that a script can observe (join non-daemon threads, atexit handlers, flushed
    streams), then _exit: the C++ destructors of libraries imported before the fork would join threads that live only
    in the parent ("terminate called after throwing ... std::system_error")."""
    import atexit
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def wait(pid: int, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for kill in (os.killpg, os.kill):  # its group (the step's children), and the step in any case
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


def main() -> None:
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(req)  # never returns
        print(json.dumps({"returncode": wait(pid, req["timeout"])}), flush=True)


if __name__ == "__main__":
    main()
