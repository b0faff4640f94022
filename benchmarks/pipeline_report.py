"""One run of the whole pipeline, timed and reported: runs `bash run_pipeline.sh ARGS` (TRAIN_ARGS passes through
as for the script), times each step, then writes benchmarks/reports/pipeline_<run>.{md,json} from the run's own
files: training settings and validation scores, test accuracy and macro-F1 of every stage, per-label recall, the
INT8 model's agreement with its simulation (in batches and one text per batch) with the distribution of logit
differences, model sizes, step times, peak memory, CPU.

    TRAIN_ARGS="--max-train-samples 2000" python benchmarks/pipeline_report.py --data-dir ../shared/data/smsa --seed 0
    python benchmarks/pipeline_report.py                  # the README's first run: default model, default data
    python benchmarks/pipeline_report.py --no-run --run-name RUN   # report a run made earlier (no step times)
    python benchmarks/pipeline_report.py --rerender --run-name RUN # rewrite a report with this code, keeping the
                                                                   # times, command, date and CPU it measured
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEP = re.compile(r"^\++ \[(\d+\.\d+)\] python (\S+)(.*)$")  # a step as `set -x` traces it with PS4 below
STAGES = (  # metrics file stage -> name in the report
    ("eager_qat", "eager QAT (PyTorch simulation)"),
    ("onnx_qat", "FP32 ONNX"),
    ("onnx_int8_dynamic", "INT8 ONNX"),
    ("eager_qat_per_text", "eager QAT"),
    ("onnx_int8_dynamic_per_text", "INT8 ONNX (as served)"),
)
PAIRS = (  # (INT8 stage, the stage it is compared with)
    ("onnx_int8_dynamic", "eager_qat"),
    ("onnx_int8_dynamic_per_text", "eager_qat_per_text"),
    ("onnx_int8_dynamic", "onnx_qat"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--no-run", action="store_true",
                   help="do not run the pipeline: report the run's existing files, without step times or memory")
    p.add_argument("--rerender", action="store_true",
                   help="do not run the pipeline: rewrite pipeline_RUN.{md,json} from the run's files and this "
                        "script, keeping the step times, memory, command, date and CPU of the existing report")
    args, pipeline_args = p.parse_known_args(argv)
    args.pipeline_args = pipeline_args
    return args


def run_name_of(pipeline_args) -> str:
    """The run name run_pipeline.sh's steps will use for these arguments."""
    from common import run_name

    p = argparse.ArgumentParser(add_help=False)
    for opt in ("--run-name", "--model", "--data-dir"):
        p.add_argument(opt)
    known, _ = p.parse_known_args(pipeline_args)
    known.model = known.model or "default"
    return run_name(known)


def run_pipeline(pipeline_args, log_path: Path) -> tuple[list[dict], float, float]:
    """Runs run_pipeline.sh, its output to log_path; [{script, args, seconds}] per step, the total wall time and the
    time before the first step (creating .venv and installing the requirements, when needed)."""
    # bash takes no PS4 from the environment when run as root, so it is set in the shell that sources the script
    # ($0 stays the script's path, which it uses to find its folder)
    trace = 'PS4="+ [\$(date +%s.%N)] "; source "$0" "$@"'
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(["bash", "-c", trace, str(ROOT / "run_pipeline.sh"), *pipeline_args], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    t_end = time.time()
    if proc.returncode != 0:
        sys.exit(f"run_pipeline.sh failed ({proc.returncode}); its output: {log_path}")
    starts = [m for m in map(STEP.match, log_path.read_text().splitlines()) if m]
    steps = []
    for i, m in enumerate(starts):
        end = float(starts[i + 1].group(1)) if i + 1 < len(starts) else t_end
        steps.append({"script": m.group(2), "args": m.group(3).strip(), "seconds": end - float(m.group(1))})
    setup_s = (float(starts[0].group(1)) - t0) if starts else t_end - t0
    return steps, t_end - t0, setup_s


def load_metrics(results: Path) -> dict:
    return {stage: json.loads((results / f"metrics_{stage}.json").read_text())
            for stage, _ in STAGES if (results / f"metrics_{stage}.json").is_file()}


def compare(a: dict, b: dict) -> dict:
    """Label agreement and the distribution over rows of the largest |logit difference| of a row."""
    import numpy as np  # here, so that a fresh clone's system Python can run the pipeline before .venv exists

    pa, pb = np.array(a["predictions"]), np.array(b["predictions"])
    d = np.abs(np.array(a["logits"], dtype=np.float64) - np.array(b["logits"], dtype=np.float64)).max(axis=1)
    return {"agreement": float((pa == pb).mean()), "n_differ": int((pa != pb).sum()), "n": len(pa),
            **{f"logit_diff_{q}": float(np.percentile(d, q)) for q in (50, 90, 99)}, "logit_diff_max": float(d.max())}


def summary(run: str, steps: list[dict], wall_s: float | None, setup_s: float | None,
            peak_rss_mb: float | None) -> dict:
    from common import MODELS_DIR, RESULTS_DIR, cpu_info

    info = json.loads((MODELS_DIR / run / "run_info.json").read_text())
    quant = json.loads((MODELS_DIR / run / "quant_config.json").read_text())
    metrics = load_metrics(RESULTS_DIR / run)
    stages = {s: {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], "samples_per_second": m["samples_per_second"],
                  "batch_size": m["batch_size"],
                  "model_size_mb": m["model_size_mb"],
                  "recall": {l: c["recall"] for l, c in m["per_class"].items()}} for s, m in metrics.items()}
    pairs = {f"{a} vs {b}": compare(metrics[a], metrics[b]) for a, b in PAIRS if a in metrics and b in metrics}
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_info(), "cores": os.cpu_count(), "run": run,
            "command": {"TRAIN_ARGS": os.environ.get("TRAIN_ARGS", ""), "args": sys.argv[1:]},
            "wall_seconds": wall_s, "setup_seconds": setup_s, "peak_rss_mb": peak_rss_mb, "steps": steps,
            "training": {k: info.get(k) for k in ("model", "model_source", "data_dir", "n_train", "epochs", "lr",
                                                  "batch_size", "max_length", "seed", "group_by_length",
                                                  "freeze_embeddings", "class_weight", "loss_weights",
                                                  "val_accuracy", "val_f1_macro", "recipe")},
            "phases": {name: {k: v for k, v in p.items() if k != "curve"} for name, p in info.get("phases", {}).items()},
            "quantization": {k: quant.get(k) for k in ("weight_type", "per_channel", "reduce_range", "target_cpu",
                                                       "chosen_for")},
            "stages": stages, "pairs": pairs}


def measured_part(report: Path) -> dict:
    """What only the run itself measured, from its existing report: kept when the report is rewritten."""
    if not report.is_file():
        raise SystemExit(f"error: no report {report} to rerender: run the pipeline through this script first")
    old = json.loads(report.read_text())
    return {k: old.get(k) for k in ("date", "cpu", "cores", "command", "wall_seconds", "setup_seconds", "peak_rss_mb",
                                    "steps")}


def phase_sentence(phases: dict) -> str:
    """The recipe's phases as training recorded them (run_info.json), or nothing for a run made before phases."""
    parts = []
    for name, p in phases.items():
        text = f"{name} phase {p['epochs']:g} epoch(s) at lr {p['lr']:g}"
        if p.get("distill_weight"):
            text += f", distilled from the FP32 model (weight {p['distill_weight']:g}, temperature {p['distill_temperature']:g})"
        if p.get("start_val_f1_macro") is not None:
            text += (f", validation macro-F1 {p['start_val_f1_macro'] * 100:.2f}% at its start, {p['val_f1_macro'] * 100:.2f}% "
                     f"kept ({p['kept']} weights)")
        else:
            text += f", validation macro-F1 {p['val_f1_macro'] * 100:.2f}%"
        parts.append(f"{text}, {p['wall_s'] / 60:.1f} min" if "wall_s" in p else text)
    if not parts:
        return ""
    fp32, qat = phases.get("fp32", {}).get("wall_s"), phases.get("qat", {}).get("wall_s")
    ratio = (f" Training took {(fp32 + qat) / fp32:.2f}x the FP32 phase alone (the issue's target: at most 1.6x)."
             if fp32 and qat else "")
    return " Phases: " + "; ".join(parts) + "." + ratio


def rewritten(s: dict) -> str:
    r = s.get("rerendered")
    return f" (this text rewritten {r['date']} with `--rerender`; times as measured)" if r else ""


def loss_description(train: dict) -> str:
    """The training loss as run_info.json records it; runs made before --class-weight existed used plain
    cross-entropy."""
    if train.get("class_weight") == "balanced":
        return "cross-entropy with label weights " + ", ".join(f"{l} {w:.2f}" for l, w in train["loss_weights"].items())
    return "plain cross-entropy" + ("" if train.get("class_weight") else " (run made before --class-weight existed)")


def render(s: dict) -> str:
    from common import isa_text

    cpu = s["cpu"]
    isa = isa_text(cpu)
    t, q = s["training"], s["quantization"]
    cmd = (f"TRAIN_ARGS=\"{s['command']['TRAIN_ARGS']}\" " if s["command"]["TRAIN_ARGS"] else "") + \
        f"python benchmarks/pipeline_report.py {' '.join(s['command']['args'])}"
    if s["wall_seconds"] is None:
        ran = (f"Reported {s['date']} on {cpu['model']} (ISA: {isa}), {s['cores']} cores, by `{cmd}` from the files of "
               f"a run made earlier (the evaluations' CPU is in their metrics files); step times and memory not "
               f"measured by this script.")
    else:
        ran = (f"Measured {s['date']} on {cpu['model']} (ISA: {isa}), {s['cores']} cores: `{cmd}` ran "
               f"`run_pipeline.sh` in {s['wall_seconds'] / 60:.1f} min (wall), of which {s['setup_seconds']:.0f} s "
               f"before the first step (creating .venv and installing, when needed); the largest step peaked at "
               f"{s['peak_rss_mb']:,.0f} MB resident.")
    L = [f"# Pipeline run `{s['run']}`", "",
         f"{ran} Every number below is read from the run's files by `benchmarks/pipeline_report.py`"
         f"{rewritten(s)}.", "",
         "## Training", "",
         f"Model `{t['model']}` ({t['model_source']}), {t['n_train']} training rows of {t['data_dir']}, "
         f"{t['epochs']:g} epoch(s) at lr {t['lr']:g}, batch {t['batch_size']}, max length {t['max_length']}, seed "
         f"{t['seed']}, loss {loss_description(t)}, batches grouped by length: {bool(t.get('group_by_length'))}, "
         f"embedding table frozen: {bool(t.get('freeze_embeddings'))}. Quantization: {q['weight_type']} weights, per channel "
         f"{q['per_channel']}, reduce_range {q['reduce_range']} ({(q.get('chosen_for') or {}).get('rule', 'given')}). "
         f"Best epoch's validation accuracy {t['val_accuracy'] * 100:.2f}%, macro-F1 {t['val_f1_macro'] * 100:.2f}%."
         + phase_sentence(s.get("phases") or {}), "",
         "## Test split", "",
         "| stage | texts per batch | accuracy | macro-F1 | recall per label | texts/s | model MB |",
         "|---|---|---|---|---|---|---|"]
    for stage, name in STAGES:
        if stage in s["stages"]:
            m = s["stages"][stage]
            recall = ", ".join(f"{l} {r * 100:.1f}" for l, r in m["recall"].items())
            L.append(f"| {name} | {m['batch_size']} | {m['accuracy'] * 100:.2f} | {m['f1_macro'] * 100:.2f} | {recall} | "
                     f"{m['samples_per_second']:.1f} | {m['model_size_mb']:.1f} |")
    L += ["", "## INT8 against the model it was made from, row by row", "",
          "Largest |logit difference| of a row, over the test rows.", "",
          "| INT8 vs | agreement | rows differ | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for key, c in s["pairs"].items():
        L.append(f"| {key} | {c['agreement'] * 100:.2f}% | {c['n_differ']} of {c['n']} | {c['logit_diff_50']:.4f} | "
                 f"{c['logit_diff_90']:.4f} | {c['logit_diff_99']:.4f} | {c['logit_diff_max']:.4f} |")
    if s["steps"]:
        L += ["", "## Step times", "", "| step | seconds |", "|---|---|"]
        L += [f"| `{st['script']} {st['args']}` | {st['seconds']:.0f} |" for st in s["steps"]]
    return "\n".join(L) + "\n"


def main():
    args = parse_args()
    run = run_name_of(args.pipeline_args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps, wall_s, setup_s, peak_mb = [], None, None, None
    if not (args.no_run or args.rerender):
        log = ROOT / "benchmarks" / ".cache" / f"pipeline_{run}.log"  # the steps' own output, not in the report
        log.parent.mkdir(parents=True, exist_ok=True)
        steps, wall_s, setup_s = run_pipeline(args.pipeline_args, log)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    s = summary(run, steps, wall_s, setup_s, peak_mb)
    if args.rerender:
        s.update(measured_part(out / f"pipeline_{run}.json"),
                 rerendered={"date": datetime.date.today().isoformat(), "args": sys.argv[1:]})
    from common import save_report  # after run_pipeline: a fresh clone's first run installs what common needs

    text = render(s)
    save_report(out, f"pipeline_{run}", s, text)
    print(text)


if __name__ == "__main__":
    main()
