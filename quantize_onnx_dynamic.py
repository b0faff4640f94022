"""Step 3: ONNX Runtime dynamic INT8 quantization with the settings the model was trained for.

Reads models/<run>/model_qat.onnx and quant_config.json (weight type, per-channel, reduce_range); writes
models/<run>/model_qat_int8_dynamic.onnx; prints both sizes and the ratio. Checks that quantize_dynamic quantized
exactly the MatMuls and embedding Gathers that training simulated, so what was trained is what is deployed.

Fidelity gate: on the first --gate-rows validation rows, in the evaluations' batches, the INT8 model (ONNX Runtime)
must reproduce the fake-quantized PyTorch model (run as eval_eager_qat.py runs it): labels agree on at least
--min-agreement of the rows, and the mean |logit difference| is at most --max-rel-logit-diff times the mean
|simulation - FP32| difference (the effect of quantization the simulation predicts; the FP32 model is model_qat.onnx).
Otherwise the INT8 model is not written: ONNX Runtime's arithmetic drifted from quant_sim.py, or the graph was
quantized otherwise than simulated. A --no-qat run has no simulation: its agreement with the FP32 model is printed
for information. The result is recorded with the INT8 model's entry in models/<run>/lineage.json.

    python quantize_onnx_dynamic.py [--run-name NAME] [--gate-rows 512] [--min-agreement 0.95] [--max-rel-logit-diff 0.6]
"""

import json
from collections import Counter

import numpy as np

from common import (INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, PipelineError, atomic_output, base_parser, check_int8_cpu,
                    check_unchanged, file_hashes, file_size_mb, load_run_model, load_split, main_guard, make_batches,
                    record_lineage, require_file, verify_lineage)
from quant_sim import QuantConfig, apply_fake_quant
from run import Run, load_run
from runtime import ort_predict_fn, ort_session, run_batches, torch_predict_fn

# The onnxruntime versions whose quantize_dynamic arithmetic quant_sim.py was verified against (its docstring;
# requirements.txt bounds onnxruntime to them).
VERIFIED_ONNXRUNTIME = "1.32.0"

# Gate defaults, from measurements (benchmarks/reports; the fidelity_trace reports for the default model).
# Relative logit criterion: the INT8 model as quantized vs the simulation, mean |logit diff| / mean |simulation -
# FP32|: 0.034 on a MiniLM QAT run, ~0 on the tests' tiny BERT; with one setting of quantize_dynamic differing from the
# simulation (reduce_range, per_channel or weight type flipped) 0.5-1.7 (~1.0 on MiniLM). Absolute logit differences
# do not separate the two: they scale with the logits.
# Labels: how many rows one flipped quantized value (from 1-ulp differences of the FP32 kernels, cascading through
# the later layers) changes depends on how many rows lie near a tie, so agreement varies between healthy models with
# the same logit error: default-recipe QAT phases of the 12-layer default on SmSA (ptq_vs_qat_recipe, 512 validation
# rows, batches of 32, AMD EPYC with VNNI) agreed on 98.8% and 99.6% (seed 1, 7- and 8-bit weights) and 96.5% (seed 2,
# 7-bit) at relative logit errors of 0.18, 0.32 and 0.16; MiniLM runs on 98.4-100%. 0.95 passes these with a margin
# and refuses a model that differs from what was trained on more than 1 row in 20; the relative logit criterion above
# is the one that separates drift from healthy noise.
MIN_AGREEMENT = 0.95
# The 12-layer default is noisier: 0.39 in batches of 32 and 0.26 one text per batch (multilingual-e5-small with a
# random 3-label head, 128 SmSA validation rows, AMD EPYC AVX2; rounding cascades, see benchmarks/fidelity_trace.py),
# hence 0.6: below the drifts measured on MiniLM (~1.0) and most single-setting flips (0.5-1.7), above healthy runs.
MAX_REL_LOGIT_DIFF = 0.6
GATE_ROWS = 512


def parse_args():
    p = base_parser(__doc__)
    p.add_argument("--gate-rows", type=int, default=GATE_ROWS,
                   help="validation rows on which the INT8 model must reproduce the simulation (0: skip the gate)")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="least fraction of those rows where INT8 and simulation predict the same label")
    p.add_argument("--max-rel-logit-diff", type=float, default=MAX_REL_LOGIT_DIFF,
                   help="largest mean |INT8 - simulation| logit difference, as a fraction of the mean |simulation - "
                        "FP32| difference (~0.03 when ONNX Runtime computes what was simulated, ~1 when not)")
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


def logit_agreement(int8: np.ndarray, reference: np.ndarray) -> dict:
    d = np.abs(int8 - reference)
    return {"rows": len(reference), "agreement": float((int8.argmax(-1) == reference.argmax(-1)).mean()),
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean()),
            "p99_abs_logit_diff": float(np.percentile(d, 99))}


def fidelity(args, run: Run, int8_path, fp32_path, qcfg: QuantConfig) -> dict:
    """The INT8 model against the FP32 model (model_qat.onnx, equal to PyTorch within 1e-4) and, for a QAT run,
    against the fake-quantized PyTorch model exactly as eval_eager_qat.py runs it, on the first --gate-rows rows of
    val.csv in the evaluations' batches."""
    from transformers import AutoTokenizer

    texts = load_split(run.data_dir, "val", run.text_column, run.label_column).texts[:args.gate_rows]
    tokenizer = AutoTokenizer.from_pretrained(run.dir)
    batches = make_batches(texts, tokenizer, run.input_names, run.max_length, args.batch_size)
    n_labels = len(run.labels)

    def ort_logits(path):
        return run_batches(ort_predict_fn(ort_session(path, args.threads), n_labels, path), batches, len(texts))[0]

    int8, fp32 = ort_logits(int8_path), ort_logits(fp32_path)
    out = {"rows": len(texts), "data": f"{run.data_dir}/val.csv", "batch_size": args.batch_size, "gated": qcfg.qat,
           "vs_fp32": logit_agreement(int8, fp32)}
    if qcfg.qat:
        model = apply_fake_quant(load_run_model(run.dir), qcfg)
        sim = run_batches(torch_predict_fn(model, args.threads), batches, len(texts))[0]
        out["vs_simulation"] = logit_agreement(int8, sim)
        out["simulated_quantization_effect"] = float(np.abs(sim - fp32).mean())  # mean |simulation - FP32|
        out["rel_logit_diff"] = out["vs_simulation"]["mean_abs_logit_diff"] / max(out["simulated_quantization_effect"],
                                                                                  1e-12)
    return out


def check_fidelity(f: dict, min_agreement: float, max_rel_logit_diff: float) -> None:
    import onnxruntime

    sim, failed = f["vs_simulation"], []
    if sim["agreement"] < min_agreement:
        failed.append(f"labels agree on {sim['agreement']:.2%} < --min-agreement {min_agreement:.2%}")
    if not f["rel_logit_diff"] <= max_rel_logit_diff:
        failed.append(f"mean |logit diff| is {f['rel_logit_diff']:.2f}x the simulated quantization effect > "
                      f"--max-rel-logit-diff {max_rel_logit_diff:g}")
    if failed:
        raise PipelineError(
            f"the INT8 model does not compute what training simulated ({'; '.join(failed)}, on {f['rows']} validation "
            f"rows): INT8 model not written. onnxruntime {onnxruntime.__version__} may quantize differently from "
            f"quant_sim.py (verified with {VERIFIED_ONNXRUNTIME}: pip install -r requirements.txt); if this drift is "
            f"expected, relax --min-agreement/--max-rel-logit-diff")


def describe(stats: dict) -> str:
    return (f"labels agree on {stats['agreement']:.2%}, |logit diff| max {stats['max_abs_logit_diff']:.3g}, "
            f"p99 {stats['p99_abs_logit_diff']:.3g}, mean {stats['mean_abs_logit_diff']:.3g}")


def print_fidelity(f: dict) -> None:
    print(f"fidelity on {f['rows']} validation rows:")
    if f["gated"]:
        print(f"  INT8 vs the simulation (eager_qat): {describe(f['vs_simulation'])} "
              f"({f['rel_logit_diff']:.3f}x the simulated quantization effect, mean {f['simulated_quantization_effect']:.3g})")
        print(f"  INT8 vs FP32: {describe(f['vs_fp32'])}")
    else:
        print(f"  INT8 vs FP32: {describe(f['vs_fp32'])} (a --no-qat run has no simulation to match: for information)")


def main():
    args = parse_args()
    if args.gate_rows < 0 or not 0 <= args.min_agreement <= 1 or not args.max_rel_logit_diff >= 0:
        raise PipelineError("--gate-rows must be >= 0, --min-agreement within 0..1, --max-rel-logit-diff >= 0")
    run = load_run(args)
    rdir = run.dir
    fp32 = require_file(rdir / ONNX_FILE, "export_to_onnx.py")
    verify_lineage(rdir, ONNX_FILE)  # the ONNX model is an export of the run's current weights
    # the settings as the Run read them, with the hash of the bytes they were parsed from
    made_from = {**file_hashes(rdir, [ONNX_FILE]), QUANT_CONFIG_FILE: run.quant_sha256}
    qcfg = run.quant_config()
    out = rdir / INT8_FILE
    with atomic_output(out) as tmp:
        try:
            quantize(fp32, tmp, qcfg, json.loads((rdir / "config.json").read_text()))
        except Exception as e:
            raise PipelineError(f"quantize_dynamic failed on {fp32} ({str(e).splitlines()[0][:200]}): "
                                f"re-run export_to_onnx.py")
        check_matches_simulation(tmp, qcfg)
        if args.gate_rows > 0:
            check_int8_cpu(out, qcfg.settings())  # the gate would measure this CPU's other arithmetic
            gate = fidelity(args, run, tmp, fp32, qcfg)
            print_fidelity(gate)
            if gate["gated"]:
                check_fidelity(gate, args.min_agreement, args.max_rel_logit_diff)
                gate.update(min_agreement=args.min_agreement, max_rel_logit_diff=args.max_rel_logit_diff)
        else:
            gate = {"skipped": "--gate-rows 0"}
            print("fidelity gate skipped (--gate-rows 0): nothing checked that ONNX Runtime computes what was simulated")
        check_unchanged(rdir, made_from)
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
