"""Step 3: ONNX Runtime dynamic INT8 quantization with the settings the model was trained for.

Reads models/<run>/model_qat.onnx and quant_config.json (weight type, per-channel, reduce_range); writes
models/<run>/model_qat_int8_dynamic.onnx; prints both sizes and the ratio. Checks that quantize_dynamic quantized
exactly the MatMuls and embedding Gathers that training simulated, so what was trained is what is deployed.

Fidelity gate: the INT8 model (ONNX Runtime) and the fake-quantized PyTorch model (as eval_eager_qat.py runs it)
predict the first --gate-rows validation rows in the evaluations' batches; below --min-agreement or above
--max-logit-diff the INT8 model is not written (an ONNX Runtime whose arithmetic drifted from quant_sim.py, or a
graph quantized otherwise than simulated). A --no-qat run has no simulation: its agreement with the FP32 model is
printed for information. The result is recorded with the INT8 model's entry in models/<run>/lineage.json.

    python quantize_onnx_dynamic.py [--run-name NAME] [--gate-rows 512] [--min-agreement 0.98] [--max-logit-diff 0.25]
"""

import json
from collections import Counter

import numpy as np

from common import (INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, PipelineError, atomic_output, base_parser, file_hashes,
                    file_size_mb, load_run, load_run_labels, load_run_model, load_split, main_guard, make_batches,
                    record_lineage, require_file, verify_lineage)
from evaluation import run_batches
from predictor import ort_predict_fn, ort_session
from quant_sim import QuantConfig, apply_fake_quant

# The onnxruntime versions whose quantize_dynamic arithmetic quant_sim.py was verified against (its docstring;
# requirements.txt bounds onnxruntime to them).
VERIFIED_ONNXRUNTIME = "1.32.0"

# Gate defaults. Simulation vs ONNX Runtime on real 6-layer models in our runs: 98.4-100% of test rows agree (the
# rows that flip are near-ties: FP32 rounding differences move an activation to the next uint8 step), max |logit
# diff| 0.03-0.06. A simulation that differs from the INT8 graph in one setting (reduce_range flipped) gives
# max |logit diff| several times larger (measured in the report of this change). See README, "Fidelity gate".
MIN_AGREEMENT = 0.98
MAX_LOGIT_DIFF = 0.25
GATE_ROWS = 512


def parse_args():
    p = base_parser(__doc__)
    p.add_argument("--gate-rows", type=int, default=GATE_ROWS,
                   help="validation rows on which the INT8 model must reproduce the simulation (0: skip the gate)")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="least fraction of those rows where INT8 and simulation predict the same label")
    p.add_argument("--max-logit-diff", type=float, default=MAX_LOGIT_DIFF,
                   help="largest |logit difference| allowed between INT8 and simulation on those rows")
    return p.parse_args()


def quantized_node_counts(onnx_path) -> Counter:
    """Quantized nodes of the INT8 graph: MatMulInteger, QAttention, QEmbedLayerNormalization, and Gathers
    reading a quantized table."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name: i.data_type for i in graph.initializer}
    counts = Counter()
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            counts["matmul"] += 1
        elif node.op_type in ("QAttention", "QEmbedLayerNormalization"):
            counts[node.op_type] += 1
        elif node.op_type == "Gather" and inits.get(node.input[0]) in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            counts["gather"] += 1
    return counts


def optimize_graph(fp32_path, out_path, model_config: dict) -> None:
    """onnxruntime.transformers fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu)."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(fp32_path), model_type="bert", num_heads=model_config["num_attention_heads"],
                         hidden_size=model_config["hidden_size"], opt_level=0)
    opt.save_model_to_file(str(out_path))


def quantize(fp32_path, int8_path, qcfg: QuantConfig, model_config: dict | None = None) -> None:
    """quantize_dynamic with qcfg's settings; with qcfg.optimize_graph, the graph is fused first
    (model_config: the run's config.json, for the number of heads and the hidden size)."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quiet the "consider pre-processing" advice
    kwargs = qcfg.quantize_dynamic_kwargs()
    if not qcfg.optimize_graph:
        quantize_dynamic(str(fp32_path), str(int8_path), **kwargs)
        return
    import onnx

    kwargs["extra_options"]["DefaultTensorType"] = onnx.TensorProto.FLOAT  # contrib ops defeat shape inference
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        optimize_graph(fp32_path, fused, model_config)
        quantize_dynamic(str(fused), str(int8_path), **kwargs)


def expected_node_counts(qcfg: QuantConfig) -> dict:
    fused_embeddings = bool(qcfg.quantized_layernorms)
    return {"matmul": len(qcfg.quantized_linears) - 3 * len(qcfg.packed_weights),
            "QAttention": len(qcfg.packed_weights),
            "gather": 0 if fused_embeddings else len(qcfg.quantized_embeddings),
            "QEmbedLayerNormalization": len(qcfg.quantized_layernorms)}


def check_matches_simulation(int8_path, qcfg: QuantConfig) -> None:
    counts, expected = quantized_node_counts(int8_path), expected_node_counts(qcfg)
    if any(counts[k] != v for k, v in expected.items()):
        found = ", ".join(f"{counts[k]} {k}" for k in expected)
        want = ", ".join(f"{v} {k}" for k, v in expected.items())
        raise PipelineError(f"quantize_dynamic quantized {found}, but training simulated {want}: the exported graph "
                            f"is not what training simulated; re-export with export_to_onnx.py and report this")


def torch_predict_fn(model, threads: int):
    import torch

    torch.set_num_threads(threads)

    @torch.inference_mode()
    def predict(batch):
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()

    return predict


def logit_agreement(int8: np.ndarray, reference: np.ndarray) -> dict:
    d = np.abs(int8 - reference)
    return {"rows": len(reference), "agreement": float((int8.argmax(-1) == reference.argmax(-1)).mean()),
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean()),
            "p99_abs_logit_diff": float(np.percentile(d, 99))}


def fidelity(args, rdir, info: dict, int8_path, qcfg: QuantConfig) -> dict:
    """The INT8 model (ONNX Runtime) against the PyTorch model it should reproduce, on the first --gate-rows rows of
    val.csv in the evaluations' batches: for a QAT run the fake-quantized model exactly as eval_eager_qat.py runs it,
    for a --no-qat run the FP32 model (no simulation to match: for information)."""
    from transformers import AutoTokenizer

    texts = load_split(args.data_dir, "val", args.text_column, args.label_column).texts[:args.gate_rows]
    tokenizer = AutoTokenizer.from_pretrained(rdir)
    batches = make_batches(texts, tokenizer, info["input_names"], args.max_length, args.batch_size)
    session = ort_session(int8_path, args.threads)
    int8, _ = run_batches(ort_predict_fn(session, len(load_run_labels(rdir)), int8_path), batches, len(texts))
    model = load_run_model(rdir)
    if qcfg.qat:
        apply_fake_quant(model, qcfg)
    reference, _ = run_batches(torch_predict_fn(model, args.threads), batches, len(texts))
    return {"reference": "eager_qat" if qcfg.qat else "eager_fp32", "gated": qcfg.qat,
            "data": f"{args.data_dir}/val.csv", "batch_size": args.batch_size, **logit_agreement(int8, reference)}


def check_fidelity(f: dict, min_agreement: float, max_logit_diff: float) -> None:
    import onnxruntime

    failed = []
    if f["agreement"] < min_agreement:
        failed.append(f"labels agree on {f['agreement']:.2%} < --min-agreement {min_agreement:.2%}")
    if not f["max_abs_logit_diff"] <= max_logit_diff:
        failed.append(f"max |logit diff| {f['max_abs_logit_diff']:.3g} > --max-logit-diff {max_logit_diff:g}")
    if failed:
        raise PipelineError(
            f"the INT8 model does not compute what training simulated ({'; '.join(failed)}, on {f['rows']} validation "
            f"rows): INT8 model not written. onnxruntime {onnxruntime.__version__} may quantize differently from "
            f"quant_sim.py (verified with {VERIFIED_ONNXRUNTIME}: pip install -r requirements.txt); if this drift is "
            f"expected, relax --min-agreement/--max-logit-diff")


def print_fidelity(f: dict) -> None:
    what = ("INT8 vs the simulation (eager_qat)" if f["gated"]
            else "INT8 vs the FP32 PyTorch model (a --no-qat run has no simulation to match: for information)")
    print(f"{what} on {f['rows']} validation rows: labels agree on {f['agreement']:.2%}, |logit diff| max "
          f"{f['max_abs_logit_diff']:.3g}, p99 {f['p99_abs_logit_diff']:.3g}, mean {f['mean_abs_logit_diff']:.3g}")


def main():
    args = parse_args()
    if args.gate_rows < 0 or not 0 <= args.min_agreement <= 1 or not args.max_logit_diff >= 0:
        raise PipelineError("--gate-rows must be >= 0, --min-agreement within 0..1, --max-logit-diff >= 0")
    rdir, info = load_run(args)
    fp32 = require_file(rdir / ONNX_FILE, "export_to_onnx.py")
    qcfg_path = require_file(rdir / QUANT_CONFIG_FILE, "train_eager_qat.py")
    verify_lineage(rdir, ONNX_FILE)  # the ONNX model is an export of the run's current weights
    made_from = file_hashes(rdir, [ONNX_FILE, QUANT_CONFIG_FILE])
    qcfg = QuantConfig.load(qcfg_path)
    out = rdir / INT8_FILE
    with atomic_output(out) as tmp:
        try:
            quantize(fp32, tmp, qcfg, json.loads((rdir / "config.json").read_text()))
        except Exception as e:
            raise PipelineError(f"quantize_dynamic failed on {fp32} ({str(e).splitlines()[0][:200]}): "
                                f"re-run export_to_onnx.py")
        check_matches_simulation(tmp, qcfg)
        if args.gate_rows > 0:
            gate = fidelity(args, rdir, info, tmp, qcfg)
            print_fidelity(gate)
            if gate["gated"]:
                check_fidelity(gate, args.min_agreement, args.max_logit_diff)
                gate.update(min_agreement=args.min_agreement, max_logit_diff=args.max_logit_diff)
        else:
            gate = {"skipped": "--gate-rows 0"}
            print("fidelity gate skipped (--gate-rows 0): nothing checked that ONNX Runtime computes what was simulated")
    record_lineage(rdir, INT8_FILE, made_from, fidelity=gate)
    fp32_mb, int8_mb = file_size_mb(fp32), file_size_mb(out)
    print(f"settings: weights {qcfg.weight_type}, per_channel={qcfg.per_channel}, reduce_range={qcfg.reduce_range}, "
          f"optimize_graph={qcfg.optimize_graph}; quantized as trained: "
          + ", ".join(f"{v} {k}" for k, v in expected_node_counts(qcfg).items() if v))
    print(f"FP32 {fp32_mb:.1f} MB -> INT8 {int8_mb:.1f} MB ({fp32_mb / int8_mb:.2f}x smaller)")
    print(f"wrote {out}")
    print(f"next: python eval_onnx_int8_dynamic.py --run-name {rdir.name}")


if __name__ == "__main__":
    main_guard(main)
