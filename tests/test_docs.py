"""README.md and README_DEPLOYMENT.md against the code: every option a README shows on a `python <script>` command
line is one that script's --help lists, every option named anywhere is one some script (or pip/torchrun) takes, and
every repository file a README names exists. Catches documentation left behind by a renamed or removed option, a
command given the wrong script's option, and a renamed or deleted file."""

import functools
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT

DOCS = ("README.md", "README_DEPLOYMENT.md")
# `python <script>.py <arguments>`: the arguments stop at the end of an inline code span, a comment or the line.
COMMAND = re.compile(r"python ((?:benchmarks/)?\w+\.py)((?: [^`#\n|]*)?)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])")
# Options of other programs that the READMEs show (pip, torchrun, spark-submit).
OTHER_TOOLS = {"--no-deps", "--index-url", "--force-reinstall", "--nproc_per_node", "--master"}
# Repository files named in inline code: scripts, requirement files, and anything under these folders.
REPO_FILE = re.compile(r"`((?:(?:benchmarks|tests|scripts|model_reference)/)?[\w./-]+\.(?:py|sh|txt|md|json))`")
FOLDERS = ("benchmarks/", "tests/", "scripts/", "model_reference/")


def text(doc: str) -> str:
    return (ROOT / doc).read_text()


@functools.lru_cache(maxsize=None)
def options_of(script: str) -> frozenset:
    """The options `python script --help` lists (the user-facing truth, whatever builds the parser)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{script} --help failed:\n{proc.stderr[-2000:]}"
    return frozenset(OPTION.findall(proc.stdout))


def commands(doc: str) -> list[tuple[str, list[str]]]:
    return [(script, OPTION.findall(args)) for script, args in COMMAND.findall(text(doc))]


def cli_scripts() -> list[str]:
    """Every script of the repository with a command line (the steps, serving, preparation, benchmarks)."""
    paths = sorted(ROOT.glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    return [str(p.relative_to(ROOT)) for p in paths if 'if __name__ == "__main__"' in p.read_text()]


@pytest.mark.parametrize("doc", DOCS)
def test_command_lines_use_options_their_script_has(doc):
    wrong = [f"python {script} {opt}" for script, opts in commands(doc) for opt in opts
             if not (ROOT / script).is_file() or opt not in options_of(script)]
    assert not wrong, f"{doc} shows options the script does not take: {wrong}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_option_named_exists_somewhere(doc):
    known = set(OTHER_TOOLS).union(*(options_of(s) for s in cli_scripts()))
    unknown = sorted(set(OPTION.findall(text(doc))) - known)
    assert not unknown, f"{doc} names options that no script of the repository takes: {unknown}"


@pytest.mark.parametrize("doc", DOCS)
def test_repository_files_named_exist(doc):
    # paths under the repository's folders, and bare names of top-level scripts and requirement files (other bare
    # names, such as config.json or metrics_*.json, are files of a run folder)
    named = {p for p in REPO_FILE.findall(text(doc))
             if p.startswith(FOLDERS) or ("/" not in p and p.endswith((".py", ".sh", ".txt")))}
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"{doc} names files the repository does not have: {missing}"


def test_the_checks_catch_a_wrong_option_and_a_missing_file():
    """The patterns find what they must: a bad option on a command line, and a file path in inline code."""
    assert OPTION.findall("python train_eager_qat.py --epochs 1 --freeze-embeddings") == ["--epochs",
                                                                                         "--freeze-embeddings"]
    assert COMMAND.findall("`python benchmarks/speed.py --models default` and") == [("benchmarks/speed.py",
                                                                                    " --models default")]
    assert "--no-such-option" not in options_of("train_eager_qat.py")
    assert REPO_FILE.findall("see `benchmarks/reports/speed.md`, `quant_sim.py`") == ["benchmarks/reports/speed.md",
                                                                                      "quant_sim.py"]
