"""README.md and README_DEPLOYMENT.md against the code: every option a README shows on a `python <script>` command
line is one that script's --help lists, every option named anywhere is one some script (or pip/torchrun) takes, and
every repository file a README names exists. Catches documentation left behind by a renamed or removed option, a
command given the wrong script's option, and a renamed or deleted file."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, run_step

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
    proc = run_step(script, "--help", env=env, check=False, timeout=300)
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


# ---------------------------------------------------------------- figures: every number checked against its report

sys.path.insert(0, str(ROOT / "benchmarks"))
import results_page  # noqa: E402

RESULTS_LINK = re.compile(r"\[([^]]*)\]\(benchmarks/README\.md#([\w-]+)\)")
NUMBER = re.compile(r"\d{4}-\d{2}-\d{2}|(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# Numbers the READMEs may give outside a link to the results page: not measurements, each with where it comes from.
# (Small counts up to 12, and every number of a script's --help or a requirement file, are allowed as well.)
CONSTANTS = {"17": "Java 17 (scripts/setup_env.sh)", "80": "prepare_data.py's 80/10/10 split",
             "16": "the 16-bit pair sums of x86 kernels without VNNI (common.int8_cpu_mismatch)",
             "503": "HTTP status of serve.py when busy", "127.0": "127.0.0.1, serve.py's default --host"}
# "(default: X)" and "default X" in a script's --help: the settings the READMEs may quote.
HELP_DEFAULT = re.compile(r"\(default: ([^)]*)\)|default (\d[\d.e-]*)")


def prose(doc: str) -> str:
    """The text a reader reads as prose: without code blocks, inline code, HTML comments, the generated headline
    table (checked below against the generator), link targets, and the texts of links to the results page (checked
    against the section they link to)."""
    t = results_page.HEADLINE.sub("", text(doc))
    t = FENCE.sub("", t)
    t = re.sub(r"`[^`\n]*`", "", t)
    t = re.sub(r"<!--.*?-->", "", t, flags=re.S)
    t = RESULTS_LINK.sub("", t)
    return re.sub(r"\]\([^)]*\)", "]", t)


@functools.lru_cache(maxsize=None)
def allowed_numbers() -> frozenset:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    found = set(CONSTANTS) | {str(i) for i in range(13)}
    for script in cli_scripts():
        out = run_step(script, "--help", env=env, check=False, timeout=300).stdout
        found |= {n for pair in HELP_DEFAULT.findall(out) for d in pair for n in NUMBER.findall(d)}
    for req in ROOT.glob("requirements*.txt"):
        found |= set(NUMBER.findall(req.read_text()))
    return frozenset(found)


def test_the_results_page_and_the_guides_table_are_what_the_reports_give():
    """benchmarks/README.md and README_DEPLOYMENT.md's headline table are generated from the reports' JSON: a report
    changed (or added, or archived) without regenerating them fails here."""
    assert (ROOT / "benchmarks" / "README.md").read_text() == results_page.page(), \
        "benchmarks/README.md is not what the reports give: run python benchmarks/results_page.py"
    guide = text("README_DEPLOYMENT.md")
    assert guide == results_page.guide_with_headline(guide), \
        "README_DEPLOYMENT.md's headline table is not what the reports give: run python benchmarks/results_page.py"


@pytest.mark.parametrize("doc", DOCS)
def test_figures_linked_to_the_results_page_are_the_figures_of_their_section(doc):
    """A figure the READMEs give is written as a link to the results-page section (one report's table) it comes from,
    and must be a figure of that section: a report re-measured, or a number typed wrong, fails here."""
    sections = {anchor: body for anchor, _, body in results_page.sections()}
    links = RESULTS_LINK.findall(text(doc))
    assert links, f"{doc} links to no section of the results page"
    wrong = []
    for label, anchor in links:
        if anchor not in sections:
            wrong.append(f"[{label}](#{anchor}): no such section")
            continue
        have = set(NUMBER.findall(sections[anchor]))
        wrong += [f"[{label}](#{anchor}): {n} is not in that section" for n in NUMBER.findall(label) if n not in have]
    assert not wrong, f"{doc}: {wrong}"


@pytest.mark.parametrize("doc", DOCS)
def test_no_number_in_the_docs_escapes_the_check(doc):
    """Every other number in the prose is a count, a default a script's --help gives, a version of a requirement
    file, or a constant listed above: a measured figure typed into the prose (not linked to its report) fails."""
    loose = sorted(set(NUMBER.findall(prose(doc))) - allowed_numbers())
    assert not loose, (f"{doc} gives numbers that no test checks: {loose}; write a measured figure as a link to its "
                       f"section of benchmarks/README.md")


def test_reports_record_no_absolute_paths():
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sorted(results_page.REPORTS.rglob("*"))
             if p.is_file() and p.suffix in (".md", ".json") for m in [results_page.ABSOLUTE.search(p.read_text())] if m]
    assert not found, f"reports with absolute paths (run python benchmarks/results_page.py): {found}"


@pytest.mark.parametrize("doc", DOCS + ("benchmarks/README.md",))
def test_no_archived_report_is_cited(doc):
    archived = {p.name for p in (results_page.REPORTS / "archive").iterdir()} - {"README.md"}
    cited = sorted(n for n in archived if n in text(doc))
    assert not cited, f"{doc} cites archived (superseded) reports: {cited}"


def heading_anchors(doc: str) -> set:
    """GitHub's anchors of a Markdown file's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", FENCE.sub("", text(doc)), re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_links_between_the_readmes_land_on_a_heading(doc):
    wrong = [f"{target}#{anchor}" for target, anchor in re.findall(r"\]\((README(?:_DEPLOYMENT)?\.md)#([\w-]+)\)", text(doc))
             if anchor not in heading_anchors(target)]
    assert not wrong, f"{doc} links to headings that do not exist: {wrong}"


def synthetic_ptq_report(new: bool, fp32_epochs: float = 2, weight_clip: str | None = None) -> dict:
    seeds = [{"seed": s, "fp32": {"f1_macro": 0.80 + s / 100}} for s in (1, 2)]
    for r in seeds:
        if new:
            r["budget"] = {"fp32": {"epochs": fp32_epochs, "lr": 1e-4}, "qat": {"epochs": 1.0, "lr": 3e-5}}
            if weight_clip:  # reports from before --weight-clip record none
                r["budget"]["qat"]["weight_clip"] = weight_clip
            for setting in ("7bit", "8bit"):
                r[f"ptq_{setting}"] = {"f1_macro": 0.78, "agreement_with_source": 0.93}
                r[f"qat_{setting}"] = {"f1_macro": 0.79, "agreement_with_source": 0.99, "kept": "trained"}
        else:
            r.update(ptq={"f1_macro": 0.78}, qat={"f1_macro": 0.77})
    report = {"config": {"report_name": "x", "model": "default", "max_train_samples": 2000, "max_length": 128},
              "cpu": {"model": "Test CPU", "flags": {"avx2": True}}, "per_seed": seeds}
    if new:
        stat = {"f1_diff_mean": 0.0123, "f1_diff_ci95": [-0.01, 0.03]}
        report.update(date="2026-12-04", wall_s=600.0, info={},
                      paired={s: {"qat_vs_ptq": stat} for s in ("7bit", "8bit")})
    return report


def test_the_results_page_reads_both_formats_of_the_ptq_vs_qat_report(tmp_path, monkeypatch):
    (tmp_path / "ptq_vs_qat_recipe.json").write_text(json.dumps(synthetic_ptq_report(new=True)))
    (tmp_path / "ptq_vs_qat_old.json").write_text(json.dumps(synthetic_ptq_report(new=False)))
    monkeypatch.setattr(results_page, "REPORTS", tmp_path)
    body = dict((a, b) for a, _, b in results_page.sections())["ptq-vs-qat"]
    assert "| 7bit | 81.50 ± 0.71 | 78.00 ± 0.00 | 79.00 ± 0.00 | +1.23 | [-1.00, +3.00] |" in body
    assert "measured 2026-12-04 on Test CPU" in body and "python benchmarks/ptq_vs_qat.py" in body
    assert "ptq_vs_qat_old" in body and "| 81.50 ± 0.71 | 78.00 ± 0.00 | 77.00 ± 0.00 |" in body
    assert "+1.23 | 2026-12-04" in results_page.headline()


@pytest.mark.parametrize("change, shown", [
    ({"fp32_epochs": 3}, "3 FP32 epoch(s) + 1 QAT epoch(s) (not the default recipe"),
    ({"weight_clip": "mse"}, "2 FP32 epoch(s) + 1 QAT epoch(s), QAT weights clipped (`--weight-clip mse`) (not the "
                             "default recipe")])
def test_reports_of_another_recipe_stay_out_of_the_headline(tmp_path, monkeypatch, change, shown):
    """A report whose arms trained otherwise than today's default recipe for the size (here 3 FP32 epochs on 2,000
    rows, default 2; or clipped QAT weights, default none) is marked in its section and gives no headline row: the
    headline speaks for the default."""
    (tmp_path / "ptq_vs_qat_recipe.json").write_text(json.dumps(synthetic_ptq_report(new=True, **change)))
    monkeypatch.setattr(results_page, "REPORTS", tmp_path)
    body = dict((a, b) for a, _, b in results_page.sections())["ptq-vs-qat"]
    assert shown in body
    assert "+1.23" in body and "+1.23" not in results_page.headline()


def test_a_re_measured_report_fails_the_figure_check(tmp_path, monkeypatch):
    """The checks are live: the scoring report re-measured makes README's linked figure wrong, the speed report
    re-measured makes the guide's table out of date."""
    for p in results_page.REPORTS.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    scoring = json.loads((tmp_path / "batch_scoring.json").read_text())
    for r in scoring["results"]:
        r["rows_per_s"] *= 1.1
    (tmp_path / "batch_scoring.json").write_text(json.dumps(scoring))
    speed = json.loads((tmp_path / "speed.json").read_text())
    for r in speed:
        if r["backend"] == "ort_int8" and r["measure"] == "latency":
            r["median_ms"] *= 1.5
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    monkeypatch.setattr(results_page, "REPORTS", tmp_path)
    with pytest.raises(AssertionError, match="is not in that section"):
        test_figures_linked_to_the_results_page_are_the_figures_of_their_section("README.md")
    guide = text("README_DEPLOYMENT.md")
    assert guide != results_page.guide_with_headline(guide)
