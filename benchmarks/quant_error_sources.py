"""Where an FP32 model's INT8 error comes from, and what clipping its weights would change.

Post-training quantization of a trained FP32 run (the arithmetic of quantize_dynamic, simulated exactly by
quant_sim), taken apart: the test split scored with only the embedding tables quantized, only the Linear weights, only
the Linears' input activations (dynamic uint8, per tensor), everything (= the INT8 model), and everything with each
Linear's weights first clamped to the range that minimizes their quantization error, as train_eager_qat.py
--weight-clip mse chooses and saves it (quant_sim.plan_weight_clip, bake_weight_clip). For each: macro-F1,
agreement with the FP32 model's labels, and the logit error relative to the FP32 logits' spread. A lever that shrinks
a source the table shows to be small cannot buy much; one that shrinks the large one may.

    python benchmarks/quant_error_sources.py --run-dir benchmarks/.cache/ptq_vs_qat/models/fp32-s1 \
        [--settings 7bit 8bit] [--split test] [--threads 2] [--report-name quant_error_sources]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {"7bit": True, "8bit": False}  # name -> reduce_range (int8 symmetric weights, per tensor)
SOURCES = ("embeddings", "weights", "activations", "all", "all, weights clipped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a trained run's folder (model_qat.pth, config.json, run_info.json)")
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["7bit", "8bit"])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--report-name", default="quant_error_sources")
    return p.parse_args(argv)


def clip_linear_weights(model, qcfg) -> list[float]:
    """Clamp every Linear's weight to its least-error range, in place, as `--weight-clip mse` chooses it
    (quant_sim.plan_weight_clip) and saves it (bake_weight_clip); returns the chosen fractions of each range."""
    from quant_sim import bake_weight_clip, plan_quantization, plan_weight_clip

    clip = plan_weight_clip(model, plan_quantization(model, qcfg)).weight_clip
    bake_weight_clip(model, replace(qcfg, weight_clip=clip))
    return list(clip.values())


def quantize_weights_only(model, qcfg, embeddings: bool, linears: bool) -> None:
    """Replace weights by their dequantized INT8 values (FP32 arithmetic elsewhere), in place."""
    import torch

    from quant_sim import fake_quant_embedding_table, fake_quant_weight_int

    with torch.no_grad():
        for m in model.modules():
            if linears and isinstance(m, torch.nn.Linear):
                q, scale = fake_quant_weight_int(m.weight, qcfg)
                m.weight.copy_(q * scale.reshape(-1, 1))
            elif embeddings and isinstance(m, torch.nn.Embedding):
                m.weight.copy_(fake_quant_embedding_table(m.weight))


@contextlib.contextmanager
def activations_quantized(model):
    """Every Linear's input replaced by its DynamicQuantizeLinear round trip (uint8, per tensor, dequantized)."""
    import torch

    from quant_sim import fake_quant_activation_int

    def hook(_module, inputs):
        x_int, scale = fake_quant_activation_int(inputs[0])
        return (x_int * scale,)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def variant(model, source: str, reduce_range: bool):
    """A copy of model computing with only `source` quantized; returns (model, clip fractions or None)."""
    from quant_sim import QuantConfig, apply_fake_quant, plan_quantization

    m = copy.deepcopy(model)
    qcfg = QuantConfig(weight_type="int8", reduce_range=reduce_range)
    if source in ("embeddings", "weights"):
        quantize_weights_only(m, qcfg, embeddings=source == "embeddings", linears=source == "weights")
        return m, None
    if source == "activations":
        return m, None  # the caller wraps it in activations_quantized
    fracs = clip_linear_weights(m, qcfg) if source == "all, weights clipped" else None
    return apply_fake_quant(m, plan_quantization(m, qcfg)), fracs


def logits_of(model, batches, n: int, n_labels: int) -> np.ndarray:
    import torch

    out = np.zeros((n, n_labels), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in batches:
            out[idx] = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return out


def scores(logits: np.ndarray, fp32: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    pred = logits.argmax(-1)
    spread = float(fp32.std())
    return {"macro_f1": float(f1_score(y, pred, average="macro")) * 100,
            "agreement_with_fp32": float((pred == fp32.argmax(-1)).mean()) * 100,
            "rel_logit_error": float(np.abs(logits - fp32).mean() / spread),
            "max_abs_logit_diff": float(np.abs(logits - fp32).max())}


def measure(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from common import cpu_info, load_run_model, load_split, make_batches

    torch.set_num_threads(args.threads)
    rdir = Path(args.run_dir)
    info = json.loads((rdir / "run_info.json").read_text())
    split = load_split(info["data_dir"], args.split, info["text_column"], info["label_column"])
    labels = list(info["labels"])
    y = np.array([labels.index(l) for l in split.labels])
    batches = make_batches(split.texts, AutoTokenizer.from_pretrained(rdir), info["input_names"], info["max_length"],
                           args.batch_size)
    model = load_run_model(rdir)
    n = len(split.texts)
    t0 = time.perf_counter()
    fp32 = logits_of(model, batches, n, len(labels))
    rows = [{"setting": "-", "source": "none (FP32)", **scores(fp32, fp32, y)}]
    for setting in args.settings:
        for source in SOURCES:
            m, fracs = variant(model, source, SETTINGS[setting])
            with activations_quantized(m) if source == "activations" else contextlib.nullcontext():
                row = {"setting": setting, "source": source, **scores(logits_of(m, batches, n, len(labels)), fp32, y)}
            if fracs:
                row["clip_fraction_median"] = float(np.median(fracs))
                row["clip_fraction_min"] = float(np.min(fracs))
            rows.append(row)
            print(row, flush=True)
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_info(), "run_dir": str(rdir),
            "model": info.get("model"), "seed": info.get("seed"), "n_train": info.get("n_train"),
            "data_dir": info["data_dir"], "split": args.split, "rows": n, "seconds": time.perf_counter() - t0,
            "results": rows, "command": "python benchmarks/quant_error_sources.py " + " ".join(sys.argv[1:])}


def write_report(res: dict, out_dir: Path, name: str) -> Path:
    from common import isa_text, save_report

    flags = isa_text(res["cpu"])
    L = [f"# Where the INT8 error comes from: `{Path(res['run_dir']).name}`", "",
         f"Measured {res['date']} on {res['cpu']['model']} ({flags}) in {res['seconds']:.0f} s: model "
         f"`{res['model']}`, seed {res['seed']}, {res['n_train']} training rows, {res['rows']} {res['split']} rows of "
         f"`{res['data_dir']}`. Generated by `{res['command']}`. Each row quantizes only the named part of the FP32 "
         f"run as ONNX Runtime's quantize_dynamic does (int8 symmetric per-tensor weights; 7bit = reduce_range); "
         f"logit error = mean |logit - FP32 logit| / std of the FP32 logits.", "",
         "| weights | quantized | macro-F1 | labels agree with FP32 | logit error | max abs logit diff | clip fraction "
         "(median, min) |", "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        clip = f"{r['clip_fraction_median']:.2f}, {r['clip_fraction_min']:.2f}" if "clip_fraction_median" in r else ""
        L.append(f"| {r['setting']} | {r['source']} | {r['macro_f1']:.2f} | {r['agreement_with_fp32']:.1f}% | "
                 f"{r['rel_logit_error']:.3f} | {r['max_abs_logit_diff']:.3f} | {clip} |")
    L.append("")
    print("\n".join(L))
    return save_report(out_dir, name, res, "\n".join(L))


def main(argv=None):
    args = parse_args(argv)
    write_report(measure(args), Path(args.out_dir), args.report_name)


if __name__ == "__main__":
    main()
