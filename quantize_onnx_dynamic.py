"""Step 3: ONNX Runtime dynamic INT8 quantization with the settings the model was trained for.

Reads models/<run>/model_qat.onnx and quant_config.json (weight type, per-channel, reduce_range); writes
models/<run>/model_qat_int8_dynamic.onnx; prints both sizes and the ratio. Checks that quantize_dynamic quantized
exactly the MatMuls and embedding Gathers that training simulated, so what was trained is what is deployed.

    python quantize_onnx_dynamic.py [--run-name NAME]
"""

from collections import Counter

from common import (INT8_FILE, ONNX_FILE, QUANT_CONFIG_FILE, PipelineError, atomic_output, base_parser,
                    file_size_mb, load_run, main_guard, require_file)
from quant_sim import QuantConfig


def quantized_node_counts(onnx_path) -> Counter:
    """MatMulInteger nodes and Gathers reading a quantized table in the INT8 graph."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name: i.data_type for i in graph.initializer}
    counts = Counter()
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            counts["matmul"] += 1
        elif node.op_type == "Gather" and inits.get(node.input[0]) in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            counts["gather"] += 1
    return counts


def quantize(fp32_path, int8_path, qcfg: QuantConfig) -> None:
    import logging

    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quiet the "consider pre-processing" advice
    quantize_dynamic(str(fp32_path), str(int8_path), **qcfg.quantize_dynamic_kwargs())


def check_matches_simulation(int8_path, qcfg: QuantConfig) -> None:
    counts = quantized_node_counts(int8_path)
    expected = {"matmul": len(qcfg.quantized_linears), "gather": len(qcfg.quantized_embeddings)}
    if counts["matmul"] != expected["matmul"] or counts["gather"] != expected["gather"]:
        raise PipelineError(
            f"quantize_dynamic quantized {counts['matmul']} MatMuls and {counts['gather']} embedding Gathers, but "
            f"training simulated {expected['matmul']} and {expected['gather']}: the export changed; re-export with "
            f"export_to_onnx.py and report this")


def main():
    args = base_parser(__doc__).parse_args()
    rdir, _ = load_run(args)
    fp32 = require_file(rdir / ONNX_FILE, "export_to_onnx.py")
    qcfg = QuantConfig.load(require_file(rdir / QUANT_CONFIG_FILE, "train_eager_qat.py"))
    out = rdir / INT8_FILE
    with atomic_output(out) as tmp:
        try:
            quantize(fp32, tmp, qcfg)
        except Exception as e:
            raise PipelineError(f"quantize_dynamic failed on {fp32} ({str(e).splitlines()[0][:200]}): "
                                f"re-run export_to_onnx.py")
        check_matches_simulation(tmp, qcfg)
    fp32_mb, int8_mb = file_size_mb(fp32), file_size_mb(out)
    print(f"settings: weights {qcfg.weight_type}, per_channel={qcfg.per_channel}, reduce_range={qcfg.reduce_range}; "
          f"{len(qcfg.quantized_linears)} MatMuls and {len(qcfg.quantized_embeddings)} embedding tables quantized")
    print(f"FP32 {fp32_mb:.1f} MB -> INT8 {int8_mb:.1f} MB ({fp32_mb / int8_mb:.2f}x smaller)")
    print(f"wrote {out}")
    print(f"next: python eval_onnx_int8_dynamic.py --run-name {rdir.name}")


if __name__ == "__main__":
    main_guard(main)
