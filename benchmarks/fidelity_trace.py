"""Where the INT8 model and the eager simulation part ways: logit differences, and a quantizer-by-quantizer trace.

For a trained run: the fake-quantized PyTorch model (what training simulated) and the INT8 ONNX model run on the
same test batches (one text per batch by default, as served), with ONNX Runtime at the deployed optimization level
(ORT_ENABLE_ALL: fused Gelu, SkipLayerNormalization, DynamicQuantizeMatMul) and node by node (ORT_DISABLE_ALL), or
at the levels --levels names (with INT8 texts/s per level, for comparing them).
Reports prediction agreement, the distribution of |logit difference| and the top-2 margins of the rows that
differ. Then, for the rows that differ most, every DynamicQuantizeLinear of the node-by-node graph is compared
with the simulation's activation quantizer in the same position: how many inputs differ (float rounding of the
FP32 ops before it), whether the scale differs, and how many quantized values flipped.

    python benchmarks/fidelity_trace.py --run-name NAME [--rows 500] [--batch-size 1] [--trace-rows 3]
        [--levels ORT_ENABLE_ALL ORT_DISABLE_ALL] [--report-name fidelity_trace_NAME]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ONNX Runtime's optimization levels, most fused first: ALL as deployed, EXTENDED (the same fusions without layout
# changes), BASIC (constant folding and eliminations, no Gelu/LayerNorm/MatMul fusions), DISABLE (node by node).
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True)
    p.add_argument("--data-dir", default=None, help="default: the run's")
    p.add_argument("--rows", type=int, default=None, help="first N test rows (default: all)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--trace-rows", type=int, default=3, help="rows traced quantizer by quantizer (batches of 1 only)")
    p.add_argument("--levels", nargs="+", choices=LEVELS, default=["ORT_ENABLE_ALL", "ORT_DISABLE_ALL"],
                   help="ONNX Runtime optimization levels to compare with the simulation")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--report-name", default=None, help="writes NAME.md and NAME.json (default: fidelity_trace_RUN)")
    return p.parse_args(argv)


def load(rdir: Path):
    import copy

    from transformers import AutoTokenizer

    from common import QUANT_CONFIG_FILE, load_run_model
    from quant_sim import QuantConfig, apply_fake_quant

    model = load_run_model(rdir)
    qcfg = QuantConfig.load(rdir / QUANT_CONFIG_FILE)
    return AutoTokenizer.from_pretrained(rdir), apply_fake_quant(copy.deepcopy(model), qcfg), qcfg


def session(model_bytes_or_path, level: str):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    o.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes_or_path, o, providers=["CPUExecutionProvider"])


def all_logits(sim, sessions, batches, n, n_labels):
    """Logits of the simulation and of every session on the same batches, and each session's seconds in run()."""
    import torch

    out = {k: np.zeros((n, n_labels), np.float32) for k in ("sim", *sessions)}
    seconds = dict.fromkeys(sessions, 0.0)
    for idx, b in batches:
        with torch.inference_mode():
            out["sim"][idx] = sim(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy()
        for level, s in sessions.items():
            t = time.perf_counter()
            out[level][idx] = s.run(["logits"], b)[0]
            seconds[level] += time.perf_counter() - t
    return out, seconds


def diff_stats(a: np.ndarray, ref: np.ndarray) -> dict:
    d = np.abs(a - ref).max(axis=1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    differ = a.argmax(1) != ref.argmax(1)
    return {"agreement": float(1 - differ.mean()), "n_differ": int(differ.sum()), "n": int(len(d)),
            "exact_rows": float((d == 0).mean()),
            "abs_logit_diff": {q: float(np.percentile(d, p)) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
                              | {"max": float(d.max()), "mean": float(d.mean())},
            "margin_of_differing_rows": sorted(float(m) for m in margin[differ]),
            "rows_with_margin_below_max_diff": int((margin < d.max()).sum())}


class QuantizerSpy:
    """Records the input, scale and quantized values of every activation quantization of the simulation, in call
    order, once per distinct input tensor (query, key and value share theirs, as in the ONNX graph)."""

    def __init__(self):
        import quant_sim

        self.mod, self.orig, self.records = quant_sim, quant_sim.fake_quant_activation_int, []

    def __enter__(self):
        def spy(x):
            x_int, scale = self.orig(x)
            if not self.records or self.records[-1]["tensor"] is not x:
                _, zp = self.mod.dynamic_activation_qparams(x)
                self.records.append({"tensor": x, "x": x.detach().numpy().copy(), "scale": float(scale),
                                     "q": (x_int + zp).detach().numpy().astype(np.int32)})
            return x_int, scale

        self.mod.fake_quant_activation_int = spy
        return self

    def __exit__(self, *exc):
        self.mod.fake_quant_activation_int = self.orig


def trace_row(sim, int8_path: Path, batch: dict) -> list[dict]:
    """Quantizer by quantizer: the node-by-node INT8 graph with every DynamicQuantizeLinear's input, scale and
    output exposed, against the simulation's quantizers in the same order."""
    import onnx
    import torch

    m = onnx.load(str(int8_path))
    dql = [n for n in m.graph.node if n.op_type == "DynamicQuantizeLinear"]
    names = []
    for n in dql:
        for name, t in ((n.input[0], onnx.TensorProto.FLOAT), (n.output[1], onnx.TensorProto.FLOAT),
                        (n.output[0], onnx.TensorProto.UINT8)):
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, t, None))
            names.append(name)
    outs = dict(zip(names, session(m.SerializeToString(), "ORT_DISABLE_ALL").run(names, batch)))
    with QuantizerSpy() as spy, torch.inference_mode():
        sim(**{k: torch.from_numpy(v) for k, v in batch.items()})
    if len(spy.records) != len(dql):
        raise RuntimeError(f"{len(dql)} DynamicQuantizeLinear nodes but {len(spy.records)} simulated quantizers")
    rows = []
    for n, r in zip(dql, spy.records):
        x_ort = outs[n.input[0]].reshape(r["x"].shape)
        q_ort = outs[n.output[0]].astype(np.int32).reshape(r["q"].shape)
        dx = np.abs(x_ort - r["x"])
        rows.append({"tensor": n.input[0], "elements": int(dx.size), "inputs_differ": int((dx > 0).sum()),
                     "max_abs_input_diff": float(dx.max()), "scale_ort": float(outs[n.output[1]]),
                     "scale_sim": r["scale"], "scale_differs": float(outs[n.output[1]]) != r["scale"],
                     "flipped": int((q_ort != r["q"]).sum()), "max_flip": int(np.abs(q_ort - r["q"]).max())})
    return rows


def short(name: str) -> str:
    return name.replace("/bert/encoder/", "").replace("_output_0", "").replace("LayerNormalization", "LN")[:70]


def write_report(res: dict, out_dir: Path) -> Path:
    from common import isa_text, save_report

    cpu = res["cpu"]
    flags = isa_text(cpu)
    lines = [f"# INT8 vs simulation, row by row and quantizer by quantizer: run `{res['run']}`", "",
             f"Measured {res['date']} on {cpu['model']} ({flags}), `python benchmarks/fidelity_trace.py "
             f"{' '.join(res['argv'])}` ({res['wall_s']:.0f} s). {res['n_rows']} test rows of {res['data']}, "
             f"batches of {res['batch_size']}; ONNX Runtime {res['onnxruntime']}, one thread.", "",
             "| ONNX Runtime level | agreement | rows differ | exact rows | abs logit diff p50 / p90 / p99 / max | "
             "top-2 margins of differing rows | rows with margin below the max diff | INT8 texts/s |",
             "|---|---|---|---|---|---|---|---|"]
    for level, s in res["stats"].items():
        q = s["abs_logit_diff"]
        margins = ", ".join(f"{m:.3f}" for m in s["margin_of_differing_rows"][:8]) or "-"
        lines.append(f"| {level} | {100 * s['agreement']:.2f}% | {s['n_differ']} | {100 * s['exact_rows']:.1f}% | "
                     f"{q['p50']:.2e} / {q['p90']:.2e} / {q['p99']:.2e} / {q['max']:.2e} | {margins} | "
                     f"{s['rows_with_margin_below_max_diff']} | {s['texts_per_s']:.1f} |")
    lines += ["", "INT8 texts/s: the session's time in `run()` over these batches, one thread, with the simulation "
              "running between calls (a comparison between levels, not a throughput benchmark: see benchmarks/speed.py)."]
    for t in res["traces"]:
        lines += ["", f"## Row {t['row']} (|logit diff| {t['abs_logit_diff']:.3e} at ORT_DISABLE_ALL, "
                      f"{t['tokens']} tokens)", "",
                  "| # | quantized activation | inputs that differ | max abs input diff | scale differs | "
                  "flipped quantized values |", "|---|---|---|---|---|---|"]
        for i, q in enumerate(t["quantizers"]):
            lines.append(f"| {i} | `{short(q['tensor'])}` | {q['inputs_differ']} of {q['elements']} | "
                         f"{q['max_abs_input_diff']:.1e} | {'yes' if q['scale_differs'] else 'no'} | {q['flipped']} |")
    return save_report(out_dir, res["report_name"] or f"fidelity_trace_{res['run']}", res, "\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size == 1 and args.trace_rows and "ORT_DISABLE_ALL" not in args.levels:
        sys.exit("error: --trace-rows traces the graph node by node: add ORT_DISABLE_ALL to --levels, "
                 "or pass --trace-rows 0")
    if args.report_name:
        args.report_name = args.report_name.removesuffix(".md").removesuffix(".json")
    import onnxruntime
    import torch

    from common import INT8_FILE, MODELS_DIR, cpu_info, load_run_labels, load_split, make_batches

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rdir = MODELS_DIR / args.run_name
    info = json.loads((rdir / "run_info.json").read_text())
    data_dir = args.data_dir or info["data_dir"]
    tokenizer, sim, _ = load(rdir)
    test = load_split(data_dir, "test", info["text_column"], info["label_column"])
    texts = test.texts[:args.rows] if args.rows else test.texts
    batches = make_batches(texts, tokenizer, info["input_names"], info["max_length"], args.batch_size)
    sessions = {level: session(str(rdir / INT8_FILE), level) for level in args.levels}
    logits, seconds = all_logits(sim, sessions, batches, len(texts), len(load_run_labels(rdir)))
    stats = {level: diff_stats(logits[level], logits["sim"]) | {"texts_per_s": len(texts) / seconds[level]}
             for level in args.levels}
    for level, s in stats.items():
        print(f"{level}: agreement {100 * s['agreement']:.2f}% ({s['n_differ']} rows differ), |logit diff| "
              + ", ".join(f"{k} {v:.2e}" for k, v in s["abs_logit_diff"].items()), flush=True)
    row_batch = {i: b for idx, b in batches for i in idx} if args.batch_size == 1 and args.trace_rows else {}
    # the rows traced: those the node-by-node graph, the one the trace runs, gets most wrong
    d = np.abs(logits["ORT_DISABLE_ALL"] - logits["sim"]).max(1) if row_batch else None
    traces = []
    for row in [int(i) for i in np.argsort(-d)[:args.trace_rows]] if row_batch else []:
        traces.append({"row": row, "abs_logit_diff": float(d[row]), "tokens": int(row_batch[row]["input_ids"].shape[1]),
                       "quantizers": trace_row(sim, rdir / INT8_FILE, row_batch[row])})
    res = {"run": args.run_name, "date": datetime.date.today().isoformat(), "cpu": cpu_info(),
           "argv": sys.argv[1:] if argv is None else argv, "data": str(Path(data_dir) / "test.csv"),
           "n_rows": len(texts), "batch_size": args.batch_size, "onnxruntime": onnxruntime.__version__,
           "report_name": args.report_name, "stats": stats, "traces": traces, "wall_s": time.perf_counter() - t0}
    print(write_report(res, Path(args.out_dir)).read_text())


if __name__ == "__main__":
    main()
