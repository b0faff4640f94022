"""The repository's structure: every module imports on its own, the project's modules import no cycle, and the
requirement files match what the code imports and what is installed."""

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = sorted(p.stem for p in ROOT.glob("*.py"))
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
TESTS = sorted(p.stem for p in (ROOT / "tests").glob("*.py"))
PROJECT = set(TOP_LEVEL) | set(BENCHMARKS)
# Needed at run time although no file imports it, and why.
USED_WITHOUT_IMPORT = {"accelerate": "transformers' Trainer runs on it"}
# test-only distributions used from the command line: (file, the text that uses it there)
DEV_USED_WITHOUT_IMPORT = {"pytest-xdist": ("run_tests.sh", "python -m pytest -n ")}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every import in a file, function-level (deferred) imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def import_graph() -> dict[str, set[str]]:
    files = [ROOT / f"{m}.py" for m in TOP_LEVEL] + [ROOT / "benchmarks" / f"{m}.py" for m in BENCHMARKS]
    return {f.stem: imported_modules(f) & PROJECT for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a module importing itself), each as a
    cycle through its modules (Tarjan's algorithm, then a path back to the start)."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph[v]:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_path(graph, scc) for scc in sccs]


def cycle_path(graph, scc) -> list[str]:
    """A shortest import path from the component's first module back to itself, inside the component."""
    start, frontier, seen = scc[0], [[scc[0]]], set()
    while frontier:
        path = frontier.pop(0)
        for w in sorted(graph[path[-1]] & set(scc)):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                frontier.append(path + [w])
    return scc


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports included): " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("module", TOP_LEVEL)
def test_module_imports_alone(module):
    """Each module imports in a fresh interpreter, as a script or a user's `import` would."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- requirements


def requirements(name: str) -> dict[str, Requirement]:
    reqs = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            reqs[canonicalize_name(r.name)] = r
    return reqs


def distributions_imported(files) -> dict[str, set[str]]:
    """Third-party distribution -> files importing it (stdlib and the project's own modules left out)."""
    to_dist = importlib.metadata.packages_distributions()
    local = PROJECT | set(TESTS)
    out = {}
    for f in files:
        for name in imported_modules(f) - local - set(sys.stdlib_module_names):
            assert name in to_dist, f"{f.relative_to(ROOT)} imports {name!r}, which no installed distribution provides"
            for dist in to_dist[name]:
                out.setdefault(canonicalize_name(dist), set()).add(str(f.relative_to(ROOT)))
    return out


RUNTIME_FILES = [ROOT / f"{m}.py" for m in TOP_LEVEL]
DEV_FILES = [ROOT / "benchmarks" / f"{m}.py" for m in BENCHMARKS] + [ROOT / "tests" / f"{m}.py" for m in TESTS]


def test_runtime_imports_are_runtime_requirements():
    declared = set(requirements("requirements.txt")) | set(requirements("requirements-nodeps.txt"))
    missing = {d: f for d, f in distributions_imported(RUNTIME_FILES).items() if d not in declared}
    assert not missing, f"imported by the pipeline but not in requirements.txt: {missing}"


def test_test_and_benchmark_imports_are_declared():
    declared = set(requirements("requirements.txt")) | set(requirements("requirements-test.txt"))
    missing = {d: f for d, f in distributions_imported(DEV_FILES).items() if d not in declared}
    assert not missing, f"imported by tests/benchmarks but in no requirements file: {missing}"


def test_every_requirement_is_used():
    runtime = set(distributions_imported(RUNTIME_FILES)) | set(USED_WITHOUT_IMPORT)
    unused = set(requirements("requirements.txt")) - runtime
    assert not unused, f"in requirements.txt but imported by no pipeline module: {sorted(unused)}"
    dev = set(distributions_imported(DEV_FILES))
    for dist, (path, usage) in DEV_USED_WITHOUT_IMPORT.items():
        if usage in (ROOT / path).read_text():
            dev.add(dist)
    unused_test = set(requirements("requirements-test.txt")) - dev
    assert not unused_test, f"in requirements-test.txt but imported by no test or benchmark: {sorted(unused_test)}"
    leaked = set(requirements("requirements-test.txt")) & set(distributions_imported(RUNTIME_FILES))
    assert not leaked, f"the pipeline imports test-only requirements: {sorted(leaked)}"


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-test.txt", "requirements-nodeps.txt"])
def test_requirements_are_bounded_and_installed(name):
    """Every requirement has an upper bound (or a pin), and the installed version (the one the tests run) meets it."""
    for dist, req in requirements(name).items():
        ops = {s.operator for s in req.specifier}
        assert ops & {"<", "<=", "==", "~="}, f"{name}: {req} has no upper bound"
        installed = importlib.metadata.version(dist)
        assert req.specifier.contains(installed, prereleases=True), f"{name}: {req} excludes installed {installed}"


def test_setup_env_reinstalls_when_test_requirements_change(tmp_path):
    """scripts/setup_env.sh installs again when a requirement file it covers changes; run_tests.sh's install
    covers requirements-test.txt. A stand-in .venv/bin/python records the pip commands instead of installing."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup_env.sh").write_text((ROOT / "scripts" / "setup_env.sh").read_text())
    for f in ("requirements.txt", "requirements-test.txt", "requirements-nodeps.txt"):
        (tmp_path / f).write_text((ROOT / f).read_text())
    log = tmp_path / "calls.log"
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)

    def setup(tests: bool) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        var = "QAT_TEST_REQUIREMENTS=1; " if tests else ""
        proc = subprocess.run(["bash", "-c", f"{var}source scripts/setup_env.sh"], cwd=tmp_path, capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if k != "QAT_TEST_REQUIREMENTS"})
        assert proc.returncode == 0, proc.stderr
        return [c for c in (log.read_text().splitlines() if log.exists() else [])[len(before):] if "-r" in c]

    assert any("-r requirements-test.txt" in c for c in setup(tests=True))
    assert setup(tests=True) == []  # nothing changed: no install
    (tmp_path / "requirements-test.txt").write_text((ROOT / "requirements-test.txt").read_text() + "# changed\n")
    assert any("-r requirements-test.txt" in c for c in setup(tests=True))
    pipeline = setup(tests=False)
    assert pipeline and not any("requirements-test.txt" in c for c in pipeline)
    assert setup(tests=False) == []
    (tmp_path / "requirements.txt").write_text((ROOT / "requirements.txt").read_text() + "# changed\n")
    assert any("-r requirements.txt" in c for c in setup(tests=True))
