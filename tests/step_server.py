"""A zygote for the tests' pipeline steps: it imports the heavy libraries once, then runs each requested script in a
forked child, as `python SCRIPT ARGS` would (its own process, argv, environment, working directory, exit status,
stdout and stderr), without paying 3-6 s of Python start and torch/transformers imports per step.

Protocol (one JSON object per line): first it answers {"ready", "set_by_imports"} (the environment variables its
imports set, as they would in every real run); then stdin gets {"script", "args", "env", "cwd", "timeout", "stdout",
"stderr"} (the last two: files the child writes), stdout answers {"returncode"} (negative: killed by that signal;
null: timed out, then the child's process group was killed). Only libraries are imported here, never the repository's
modules, so each step imports and initialises the project's code itself; a step whose environment differs from this
process's in what the libraries read at import is run by the caller as a plain subprocess (helpers.run_step).
"""

import json
import os
import random
import signal
import sys
import time
import traceback
import types


def preload() -> dict:
    """Import what every step imports; returns the environment variables the imports set."""
    before = dict(os.environ)
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer  # noqa: F401

    return {k: v for k, v in os.environ.items() if before.get(k) != v}


def run_child(req: dict, set_by_imports: dict) -> None:
    """In the forked child: become `python script args` and exit as it would."""
    import numpy

    os.setpgid(0, 0)  # the parent kills the whole group on a timeout (a step's own children included)
    random.seed()  # a fresh process's unseeded generators differ from run to run; forked copies would not
    numpy.random.seed()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update({**set_by_imports, **req["env"]})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    script = os.path.abspath(req["script"])
    sys.argv = [req["script"], *req["args"]]
    sys.path[0] = os.path.dirname(script)  # as `python script` sets it
    main = types.ModuleType("__main__")  # stays __main__ through shutdown (atexit handlers, pickling, threads)
    main.__file__, main.__builtins__ = script, __builtins__
    sys.modules["__main__"] = main
    code = 0
    try:
        with open(script, "rb") as f:
            source = f.read()
        exec(compile(source, script, "exec"), main.__dict__)
    except SystemExit as e:  # what the interpreter does with it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_like_the_interpreter(code)


def exit_like_the_interpreter(code: int) -> None:
    """What Python's shutdown does that a script can observe (join non-daemon threads, atexit handlers, flushed
    streams, C stdio included), then _exit: the C++ destructors of libraries imported before the fork would join
    threads that live only in the parent ("terminate called after throwing ... std::system_error")."""
    import atexit
    import ctypes
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        ctypes.CDLL(None).fflush(None)
        if code == -signal.SIGINT:  # as the interpreter ends on an uncaught KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # its group (the step's children), and the step in any case
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait(pid: int, timeout: float, parent: int):
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                kill_group(pid)
                os.waitpid(pid, 0)
                return None
            if os.getppid() != parent:  # the test process died: its steps go with it
                raise SystemExit(1)
            time.sleep(0.02)
    except BaseException:  # interrupted (Ctrl-C reaches this process, not the step's own group)
        kill_group(pid)
        raise


def main() -> None:
    parent = os.getppid()
    set_by_imports = preload()
    print(json.dumps({"ready": True, "set_by_imports": set_by_imports}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(req, set_by_imports)  # never returns
        print(json.dumps({"returncode": wait(pid, req["timeout"], parent)}), flush=True)


if __name__ == "__main__":
    main()
