"""The evaluation shared by eval_onnx_int8_dynamic.py, eval_onnx_qat.py and eval_eager_qat.py.

Every stage sees the same batches (texts sorted by length, padded per batch, same batch size), because
ONNX Runtime's dynamic activation scales are per tensor and so depend on every row and pad of a batch.
Writes results/<run>/metrics_<stage>.json and confusion_matrix_<stage>.png, then rewrites the run's model card
(models/<run>/README.md) and training curve (results/<run>/training_curve.png) with model_card.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import (PipelineError, atomic_output, check_known_labels, cpu_info, file_size_mb, lineage_conflicts, load_split,
                    make_batches, write_json)
from model_card import write_model_card
from predictor import Predictor
from runtime import run_batches
from run import Run

# The script that writes each stage's metrics, named when stale metrics are skipped.
STAGE_SCRIPTS = {"eager_qat": "eval_eager_qat.py", "eager_fp32": "eval_eager_qat.py --no-fake-quant",
                 "onnx_qat": "eval_onnx_qat.py", "onnx_int8_dynamic": "eval_onnx_int8_dynamic.py"}


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation runs, from the command line once: texts per batch, threads, texts timed one per call."""

    batch_size: int
    threads: int
    latency_samples: int
    per_text: bool = False

    @classmethod
    def from_args(cls, args) -> "EvalSettings":
        per_text = bool(getattr(args, "per_text", False))  # --per-text: batches of one, never padded
        return cls(batch_size=1 if per_text else args.batch_size, threads=args.threads,
                   latency_samples=args.latency_samples, per_text=per_text)

    def stage(self, stage: str) -> str:
        """The stage name: per-text metrics are kept apart from the batched ones."""
        return f"{stage}_per_text" if self.per_text else stage


def evaluate_onnx(run: Run, settings: EvalSettings, stage: str, path: Path, extra: dict | None = None) -> dict:
    """evaluate() for an ONNX model file of the run, through the Predictor the service uses (which checks the
    file's lineage and that this CPU computes it as trained)."""
    predictor = Predictor(run, threads=settings.threads, model_file=path.name, batch_size=settings.batch_size)
    return evaluate(run, settings, stage, path, predictor.forward, predictor.lineage, extra)


def add_per_text_option(parser) -> None:
    parser.add_argument("--per-text", action="store_true",
                        help="each text its own batch, no padding (as serve.py and predict.py score by default); "
                             "overrides --batch-size; writes the stage <stage>_per_text")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(pm), "recall_macro": float(rm), "f1_macro": float(fm),
        "per_class": {l: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, l in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion_matrix(cm, labels, title, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def batch1_latency_ms(predict, texts, tokenizer, input_names, max_length: int, n: int) -> dict:
    """p50/p95 latency of one text per call (tokenization included) over the first n texts (all of them when
    n >= len(texts)), after one untimed warm-up call on the first text."""
    def one(text):
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        predict({k: enc[k].astype(np.int64) for k in input_names})

    if n <= 0 or not texts:
        return {}
    one(texts[0])  # warm-up, not counted
    lat = []
    for text in texts[:n]:
        t0 = time.perf_counter()
        one(text)
        lat.append((time.perf_counter() - t0) * 1000)
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "n": len(lat)}


def compare_with_other_stages(rdir_results: Path, stage: str, metrics: dict) -> tuple[dict, dict]:
    """Row-by-row agreement of predictions (and logit error) with every other stage of the run measured on the same
    model lineage; ({stage: agreement}, {stage: why skipped}) — metrics of a model made from other weights (stale,
    e.g. from before a retrain) or without a lineage record are skipped, not compared."""
    out, skipped = {}, {}
    for path in sorted(rdir_results.glob("metrics_*.json")):
        other = json.loads(path.read_text())
        if other.get("stage") == stage:
            continue
        rerun = STAGE_SCRIPTS.get(other.get("stage"), "its evaluation")
        if not isinstance(other.get("lineage"), dict):
            skipped[other["stage"]] = f"no lineage record (measured by an older version): re-run {rerun}"
            continue
        conflicts = lineage_conflicts(metrics["lineage"], other["lineage"])
        if conflicts:
            skipped[other["stage"]] = (f"stale: measured on a model made from another {', '.join(conflicts)}: "
                                       f"re-run {rerun}")
            continue
        if other.get("data_sha256") != metrics["data_sha256"]:  # predictions on other rows: nothing to compare
            skipped[other["stage"]] = f"measured on another test.csv (or before its hash was recorded): re-run {rerun}"
            continue
        a, b = np.array(metrics["predictions"]), np.array(other["predictions"])
        entry = {"agreement": float((a == b).mean()), "n_disagree": int((a != b).sum()),
                 "same_batches": other.get("batch_size") == metrics["batch_size"], "lineage": other["lineage"]}
        if other.get("logits") and np.shape(other["logits"]) == np.shape(metrics["logits"]):
            d = np.abs(np.array(metrics["logits"]) - np.array(other["logits"]))
            entry.update(max_abs_logit_diff=float(d.max()), mean_abs_logit_diff=float(d.mean()))
        out[other["stage"]] = entry
    return out, skipped


def evaluate(run: Run, settings: EvalSettings, stage: str, model_path: Path, predict, lineage: dict,
             extra: dict | None = None) -> dict:
    """Evaluate predict (batch dict -> logits) on the test split of run.data_dir; write metrics JSON and confusion
    matrix PNG to run.results_dir. stage: the stage's name before settings.stage(). lineage: {file: sha256} of the
    model measured and what it was made from (recorded with the metrics)."""
    from transformers import AutoTokenizer

    stage = settings.stage(stage)
    labels = list(run.labels)
    data_sha256 = run.test_file_sha256()  # before reading it: the hash recorded is that of the rows measured
    test = load_split(run.data_dir, "test", run.text_column, run.label_column)
    if run.test_file_sha256() != data_sha256:
        raise PipelineError(f"{run.data_dir}/test.csv changed while it was read: run the evaluation again")
    check_known_labels(test, {l: i for i, l in enumerate(labels)}, f"{run.data_dir}/test.csv")
    tokenizer = AutoTokenizer.from_pretrained(run.dir)

    t0 = time.perf_counter()
    batches = make_batches(test.texts, tokenizer, run.input_names, run.max_length, settings.batch_size)
    tokenize_s = time.perf_counter() - t0
    predict(batches[0][1])  # warm-up: memory allocation, kernel selection
    logits, infer_s = run_batches(predict, batches, len(test.texts))

    latency = batch1_latency_ms(predict, test.texts, tokenizer, run.input_names, run.max_length,
                                settings.latency_samples)

    y_true = np.array([labels.index(l) for l in test.labels])
    y_pred = logits.argmax(-1)
    metrics = {"stage": stage, "run": run.name, "model_file": str(model_path), **classification_metrics(y_true, y_pred, labels)}
    metrics.update({
        "samples_per_second": len(test.texts) / infer_s,
        "samples_per_second_with_tokenization": len(test.texts) / (infer_s + tokenize_s),
        "batch1_latency_ms": latency, "batch_size": settings.batch_size, "threads": settings.threads,
        "max_length": run.max_length,
        "batching": "each text alone (batch of 1, no padding)" if settings.per_text else "sorted by length, padded per batch",
        "model_size_mb": file_size_mb(model_path), "n_samples": len(test.texts), "labels": labels,
        "data": str(Path(run.data_dir) / "test.csv"), "data_sha256": data_sha256, "cpu": cpu_info(),
        **(extra or {}), "lineage": lineage, "predictions": [labels[i] for i in y_pred],
        "logits": np.round(logits, 6).tolist(),
    })
    out_dir = run.results_dir
    metrics["agreement"], metrics["agreement_skipped"] = compare_with_other_stages(out_dir, stage, metrics)
    write_json(out_dir / f"metrics_{stage}.json", metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], labels,
                          f"{run.name} / {stage}\naccuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f}",
                          out_dir / f"confusion_matrix_{stage}.png")
    print_report(metrics, out_dir, stage)
    if run.own_data:  # the model card shows the run's own test split only
        print(f"  wrote the model card {write_model_card(run, out_dir)}")
    return metrics


def print_report(m: dict, out_dir: Path, stage: str) -> None:
    print(f"{stage}: {m['n_samples']} test rows of {m['data']}")
    print(f"  accuracy {m['accuracy']:.4f}  macro P/R/F1 {m['precision_macro']:.4f}/{m['recall_macro']:.4f}/"
          f"{m['f1_macro']:.4f}")
    for label, c in m["per_class"].items():
        print(f"    {label:>12}: P {c['precision']:.4f} R {c['recall']:.4f} F1 {c['f1']:.4f} (n={c['support']})")
    print(f"  {m['samples_per_second']:.1f} samples/s (batch {m['batch_size']}, {m['threads']} threads, after warm-up; "
          f"{m['samples_per_second_with_tokenization']:.1f} with tokenization), model {m['model_size_mb']:.1f} MB")
    if m["batch1_latency_ms"]:
        lat = m["batch1_latency_ms"]
        print(f"  one text per call: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms (tokenization included, {lat['n']} texts)")
    for other, a in m["agreement"].items():
        logit = f", max |logit diff| {a['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in a else ""
        batches = "" if a["same_batches"] else " (different batch size: not a like-for-like comparison)"
        print(f"  agreement with {other}: {a['agreement'] * 100:.2f}% ({a['n_disagree']} rows differ){logit}{batches}")
    for other, why in m["agreement_skipped"].items():
        print(f"  not compared with {other}: {why}")
    print(f"  wrote {out_dir}/metrics_{stage}.json and confusion_matrix_{stage}.png")
