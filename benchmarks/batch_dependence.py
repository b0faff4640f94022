"""How often a text's INT8 label depends on what else shares its batch.

ONNX Runtime's dynamic quantization picks one activation scale per tensor (DynamicQuantizeLinear over the whole
batch, padding included), so a text's logits move with the other rows and the padding of its batch. This script
runs the run's test texts
  - alone (batch of 1, no padding: the reference, what serve.py's default --batch-mode per-text does),
  - in batches of --batch-size sorted by length (what the eval scripts and predictor.py's default do),
  - in batches of --batch-size of randomly mixed texts (what concurrent requests in --batch-mode shared can give),
    for --seeds different shuffles,
and counts the texts whose label differs from the reference. Writes benchmarks/reports/batch_dependence.md/.json.

    python benchmarks/batch_dependence.py --run-name e5-small-qat-int8-smsa
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (INT8_FILE, MODELS_DIR, RUN_INFO_FILE, PipelineError, load_split, main_guard,  # noqa: E402
                    save_report)
from common import cpu_info, isa_text  # noqa: E402


def compare(name: str, logits: np.ndarray, ref: np.ndarray, y_true: np.ndarray | None, labels) -> dict:
    from runtime import softmax

    pred, ref_pred = logits.argmax(-1), ref.argmax(-1)
    flips = np.flatnonzero(pred != ref_pred)
    dp = np.abs(softmax(logits) - softmax(ref))
    return {
        "condition": name, "n": int(len(pred)), "label_changes": int(len(flips)),
        "label_change_rate": float(len(flips) / len(pred)),
        "max_abs_prob_diff": float(dp.max()), "mean_abs_prob_diff": float(dp.mean()),
        "max_abs_logit_diff": float(np.abs(logits - ref).max()),
        "accuracy": float((pred == y_true).mean()) if y_true is not None else None,
        "changed_rows": flips.tolist()[:50],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True)
    p.add_argument("--data-dir", default=None, help="test.csv from here (default: the run's data dir)")
    p.add_argument("--model-file", default=INT8_FILE)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, default=3, help="random batch compositions")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-texts", type=int, default=None, help="only the first N test texts")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    args = p.parse_args()

    from predictor import Predictor

    rdir = MODELS_DIR / args.run_name
    if not rdir.is_dir():
        raise PipelineError(f"no run {args.run_name!r} in {MODELS_DIR}")
    info = json.loads((rdir / RUN_INFO_FILE).read_text())
    data_dir = args.data_dir or info["data_dir"]
    if not Path(data_dir).is_dir() and (ROOT / data_dir).is_dir():
        data_dir = str(ROOT / data_dir)
    test = load_split(data_dir, "test", info.get("text_column", "text"), info.get("label_column", "label"))
    texts, gold = test.texts[:args.max_texts], test.labels[:args.max_texts]

    alone_p = Predictor(rdir, threads=args.threads, model_file=args.model_file, per_text=True)
    batch_p = Predictor(rdir, threads=args.threads, model_file=args.model_file, batch_size=args.batch_size)
    labels = alone_p.labels
    y_true = np.array([labels.index(l) if l in labels else -1 for l in gold])

    ref = alone_p.predict_logits(texts)
    sorted_logits = batch_p.predict_logits(texts)
    rows = [compare("alone (batch 1, no padding)", ref, ref, y_true, labels),
            compare(f"sorted by length, batches of {args.batch_size}", sorted_logits, ref, y_true, labels)]
    batched_preds = [sorted_logits.argmax(-1)]
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(texts))
        logits = np.zeros_like(ref)
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            logits[idx] = batch_p.predict_logits([texts[i] for i in idx])
        rows.append(compare(f"random batches of {args.batch_size} (seed {seed})", logits, ref, y_true, labels))
        batched_preds.append(logits.argmax(-1))
    ever_changed = (np.stack(batched_preds) != ref.argmax(-1)).any(0)
    from runtime import softmax

    top2 = np.sort(softmax(ref), axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # top-1 minus top-2 probability, alone

    report = {
        "run": args.run_name, "model_file": args.model_file, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_info(), "threads": alone_p.threads, "data": str(Path(data_dir) / "test.csv"), "n_texts": len(texts),
        "batch_size": args.batch_size, "seeds": args.seeds, "conditions": rows,
        "texts_with_a_label_change_in_any_batched_condition": int(ever_changed.sum()),
        "any_condition_change_rate": float(ever_changed.mean()),
        "median_margin_all": float(np.median(margin)),
        "max_margin_of_changed": float(margin[ever_changed].max()) if ever_changed.any() else None,
        "texts_with_margin_under_0.05": int((margin < 0.05).sum()),
    }
    flags = isa_text(report["cpu"])
    lines = [
        f"# Batch dependence of INT8 labels: {args.run_name}",
        "",
        f"- date: {report['date']}; CPU: {report['cpu']['model']} ({flags}); ONNX Runtime threads: {report['threads']}",
        f"- model: {args.model_file}; texts: {report['n_texts']} of {report['data']}",
        "- reference: every text alone (batch of 1, no padding), which is what `serve.py` does by default "
        "(`--batch-mode per-text`) and `Predictor(..., per_text=True)`",
        "",
        "| condition | label changes vs alone | rate | max abs prob diff | mean abs prob diff | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        lines.append(f"| {r['condition']} | {r['label_changes']} / {r['n']} | {r['label_change_rate'] * 100:.2f}% | "
                     f"{r['max_abs_prob_diff']:.4f} | {r['mean_abs_prob_diff']:.5f} | {acc} |")
    lines += [
        "",
        f"Texts whose label changed in at least one batched condition: {report['texts_with_a_label_change_in_any_batched_condition']}"
        f" / {len(texts)} ({report['any_condition_change_rate'] * 100:.2f}%).",
        f"Margin (top-1 minus top-2 probability, text alone): median {report['median_margin_all']:.4f} over all texts; "
        + (f"largest among the changed texts {report['max_margin_of_changed']:.4f}; "
           if report["max_margin_of_changed"] is not None else "")
        + f"{report['texts_with_margin_under_0.05']} texts have a margin under 0.05. A less confident model (few "
        f"training steps) has more texts near a tie, and so more changes.",
        "",
        "Why: dynamic quantization (DynamicQuantizeLinear) computes one activation scale and zero point per tensor, "
        "over all rows and padded positions of the batch, so the other texts and the padding change the rounding "
        "of every text's activations. Texts whose top two probabilities are close flip. A text run alone has no "
        "padding and no neighbours, so its result depends on the text only: that is serve.py's default. "
        "`--batch-mode shared` trades this for throughput.",
    ]
    save_report(Path(args.out_dir), "batch_dependence", report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main_guard(main)
