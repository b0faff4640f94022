"""8-bit vs 7-bit weights on this CPU: does ONNX Runtime compute each as simulated, and at what speed?

For a trained run, its FP32 ONNX model is quantized twice (8-bit int8 weights = --target-cpu vnni, 7-bit =
--target-cpu portable), each INT8 model is run on the first --rows test texts (one text per batch, as served) and
compared with its own simulation (the run's weights fake-quantized with that setting): label agreement, max |logit
difference|. The 8-bit model runs twice: with ONNX Runtime's default session and with the session option
`session.x64quantprecision=U8U8`, which ONNX Runtime documents as the slower, overflow-free alternative to its U8S8
kernels on x64 CPUs without VNNI. On a CPU with VNNI every variant should be exact; on one without, this measures
whether U8U8 is (the question that decides whether --target-cpu vnni models could be served there instead of refused)
and what it costs in texts/s against 7-bit weights.

    python benchmarks/weight_range.py --run-name NAME [--rows 200] [--threads 1] [--report-name weight_range_NAME]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = (  # name, reduce_range, session options
    ("7-bit (portable)", True, {}),
    ("8-bit (vnni), default session", False, {}),
    ("8-bit (vnni), session.x64quantprecision=U8U8", False, {"session.x64quantprecision": "U8U8"}),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True)
    p.add_argument("--rows", type=int, default=200, help="first N test rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--report-name", default=None, help="writes NAME.md and NAME.json (default: weight_range_RUN)")
    return p.parse_args(argv)


def session(path: Path, threads: int, config: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def simulated_logits(model, qcfg, batches, n: int, n_labels: int) -> np.ndarray:
    import torch

    from quant_sim import apply_fake_quant

    sim = apply_fake_quant(copy.deepcopy(model), qcfg)
    out = np.zeros((n, n_labels), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in batches:
            out[idx] = sim(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return out


def timed_logits(sess, batches, n: int, n_labels: int) -> tuple[np.ndarray, float]:
    names = [i.name for i in sess.get_inputs()]
    sess.run(None, {k: batches[0][1][k] for k in names})  # warm-up
    out = np.zeros((n, n_labels), dtype=np.float32)
    t0 = time.perf_counter()
    for idx, batch in batches:
        out[idx] = sess.run(None, {k: batch[k] for k in names})[0]
    return out, n / (time.perf_counter() - t0)


def measure(args) -> dict:
    import dataclasses

    import torch
    from transformers import AutoTokenizer

    from common import (MODELS_DIR, ONNX_FILE, QUANT_CONFIG_FILE, cpu_info, has_vnni, load_run_model, load_split,
                        make_batches, verify_lineage)
    from quant_sim import QuantConfig
    from quantize_onnx_dynamic import check_matches_simulation, quantize

    torch.set_num_threads(args.threads)
    rdir = MODELS_DIR / args.run_name
    info = json.loads((rdir / "run_info.json").read_text())
    texts = load_split(info["data_dir"], "test", info["text_column"], info["label_column"]).texts[:args.rows]
    tokenizer = AutoTokenizer.from_pretrained(rdir)
    batches = make_batches(texts, tokenizer, info["input_names"], info["max_length"], 1)
    model = load_run_model(rdir)
    base = QuantConfig.load(rdir / QUANT_CONFIG_FILE)
    verify_lineage(rdir, ONNX_FILE)  # the FP32 ONNX is an export of the weights simulated here
    model_config = json.loads((rdir / "config.json").read_text())
    n, n_labels = len(texts), len(info["labels"])
    results, sims = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, reduce_range, config in VARIANTS:
            qcfg = dataclasses.replace(base, weight_type="int8", reduce_range=reduce_range)
            path = Path(tmp) / f"rr{int(reduce_range)}.onnx"
            if not path.exists():
                quantize(rdir / ONNX_FILE, path, qcfg, model_config)  # as the quantize step does (fused graph too)
                check_matches_simulation(path, qcfg)
            if reduce_range not in sims:
                sims[reduce_range] = simulated_logits(model, qcfg, batches, n, n_labels)
            logits, texts_per_s = timed_logits(session(path, args.threads, config), batches, n, n_labels)
            sim = sims[reduce_range]
            results.append({"variant": name, "reduce_range": reduce_range, "session_config": config,
                            "agreement": float((logits.argmax(-1) == sim.argmax(-1)).mean()),
                            "max_abs_logit_diff": float(np.abs(logits - sim).max()),
                            "mean_abs_logit_diff": float(np.abs(logits - sim).mean()), "texts_per_s": texts_per_s})
    cpu = cpu_info()
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "vnni": has_vnni(cpu), "run": args.run_name,
            "rows": n, "threads": args.threads, "max_length": info["max_length"], "results": results,
            "command": "python benchmarks/weight_range.py " + " ".join(sys.argv[1:])}


def write_report(res: dict, out_dir: Path, name: str) -> Path:
    from common import isa_text, save_report

    flags = isa_text(res["cpu"])
    seven = res["results"][0]["texts_per_s"]
    L = [f"# 8-bit vs 7-bit weights on {res['cpu']['model']}", "",
         f"Measured {res['date']} on {res['cpu']['model']} ({flags}; VNNI: {'yes' if res['vnni'] else 'no'}), run "
         f"`{res['run']}`, first {res['rows']} test texts one per batch (max length {res['max_length']}), "
         f"{res['threads']} thread(s). Generated by `{res['command']}`. Each INT8 model is compared with its own "
         f"simulation (the run's weights fake-quantized with the same setting).", "",
         "| variant | labels agree with its simulation | max abs logit diff | mean abs logit diff | texts/s | "
         "speed vs 7-bit |", "|---|---|---|---|---|---|"]
    for r in res["results"]:
        L.append(f"| {r['variant']} | {r['agreement'] * 100:.1f}% | {r['max_abs_logit_diff']:.3g} | "
                 f"{r['mean_abs_logit_diff']:.3g} | {r['texts_per_s']:.1f} | {r['texts_per_s'] / seven:.2f}x |")
    L.append("")
    print("\n".join(L))
    return save_report(out_dir, name, res, "\n".join(L))


def main(argv=None):
    args = parse_args(argv)
    res = measure(args)
    write_report(res, Path(args.out_dir), args.report_name or f"weight_range_{args.run_name}")


if __name__ == "__main__":
    main()
