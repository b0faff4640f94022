"""Where the INT8 model's time goes: ONNX Runtime's profiler, time per operator type.

Shows how much of an INT8 forward pass is the INT8 GEMM (DynamicQuantizeMatMul / MatMulInteger, including the
dynamic quantization of its input) and how much stays FP32 (attention products, softmax, LayerNorm, GELU), which
bounds the speed-up INT8 can give over FP32 (Amdahl). Uses the models benchmarks/speed.py exported.

    python benchmarks/profile_int8.py [--model bert-base-shaped] [--batch 32] [--seq 64] [--threads 2]
"""

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def profile(path: Path, feed: dict, threads: int, runs: int) -> dict:
    """Mean milliseconds per run for each operator type (warm-up excluded)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(2):
        sess.run(None, feed)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feed)  # warm-up of the profiled session
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000.0
    scale = 1.0 / (runs + 1)
    return {op: ms * scale for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bert-base-shaped")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "reports" / "profile_int8.md"))
    args = p.parse_args()
    from common import cpu_info, isa_text, write_text

    folders = sorted((ROOT / "benchmarks" / ".cache").glob(f"{args.model}-*"), key=os.path.getmtime)
    if not folders:
        sys.exit(f"no export of {args.model} in benchmarks/.cache: run benchmarks/speed.py first")
    folder = folders[-1]
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (args.batch, args.seq)).astype(np.int64),
            "attention_mask": np.ones((args.batch, args.seq), np.int64),
            "token_type_ids": np.zeros((args.batch, args.seq), np.int64)}
    gemm_ops = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear",
                "QAttention", "MatMul", "FusedMatMul", "Gemm"}
    cpu = cpu_info()
    lines = [f"# Where the time goes: {args.model}, batch {args.batch} x {args.seq}, {args.threads} threads", "",
             f"ONNX Runtime profiler, mean kernel time per run; CPU {cpu['model']} "
             f"({isa_text(cpu)}).", ""]
    for label, name in (("FP32", "model.onnx"), ("INT8", "model_int8.onnx")):
        ops = profile(folder / name, feed, args.threads, args.runs)
        total = sum(ops.values())
        gemm = sum(ms for op, ms in ops.items() if op in gemm_ops)
        lines += [f"## {label} ({name}): {total:.1f} ms of kernels per run; GEMM-type ops {gemm:.1f} ms "
                  f"({gemm / total * 100:.0f}%)", "", "| operator | ms per run | share |", "|---|---|---|"]
        lines += [f"| {op} | {ms:.2f} | {ms / total * 100:.1f}% |" for op, ms in list(ops.items())[:12]]
        lines.append("")
    write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
