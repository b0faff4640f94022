"""Step 3: ONNX Runtime dynamic INT8 quantization with the settings the model was trained for.

Reads models/<run>/model_qat.onnx and quant_config.json (weight type, per-channel, reduce_range); writes
models/<run>/model_qat_int8_dynamic.onnx; prints both sizes and the ratio. Checks that quantize_dynamic quantized
exactly the MatMuls and embedding Gathers that training simulated, so what was trained is what is deployed.

    python quantize_onnx_dynamic.py [--run-name NAME]
"""

import json
from collections import Counter

from common import (INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, PipelineError, atomic_output, base_parser,
                    file_size_mb, load_run, main_guard, require_file)
from quant_sim import QuantConfig


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


def main():
    args = base_parser(__doc__).parse_args()
    rdir, _ = load_run(args)
    fp32 = require_file(rdir / ONNX_FILE, "export_to_onnx.py")
    qcfg = QuantConfig.load(require_file(rdir / QUANT_CONFIG_FILE, "train_eager_qat.py"))
    out = rdir / INT8_FILE
    with atomic_output(out) as tmp:
        try:
            quantize(fp32, tmp, qcfg, json.loads((rdir / "config.json").read_text()))
        except Exception as e:
            raise PipelineError(f"quantize_dynamic failed on {fp32} ({str(e).splitlines()[0][:200]}): "
                                f"re-run export_to_onnx.py")
        check_matches_simulation(tmp, qcfg)
    fp32_mb, int8_mb = file_size_mb(fp32), file_size_mb(out)
    print(f"settings: weights {qcfg.weight_type}, per_channel={qcfg.per_channel}, reduce_range={qcfg.reduce_range}, "
          f"optimize_graph={qcfg.optimize_graph}; quantized as trained: "
          + ", ".join(f"{v} {k}" for k, v in expected_node_counts(qcfg).items() if v))
    print(f"FP32 {fp32_mb:.1f} MB -> INT8 {int8_mb:.1f} MB ({fp32_mb / int8_mb:.2f}x smaller)")
    print(f"wrote {out}")
    print(f"next: python eval_onnx_int8_dynamic.py --run-name {rdir.name}")


if __name__ == "__main__":
    main_guard(main)
