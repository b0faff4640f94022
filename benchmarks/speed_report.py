"""The report of benchmarks/speed.py: markdown tables (speed.md), the chart (speed.png), and the issue-3 targets
judged from the measured records. Measuring lives in speed.py; this module only reads its records and metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BACKENDS = ("torch_fp32", "ort_fp32", "ort_int8")
SMSA_BATCH = 32  # the batch of the end-to-end pass over the test texts (speed.py measures with it)

# Issue 3's targets: (label, numerator record key, denominator record key, target ratio).
TARGETS = [
    ("INT8 vs PyTorch FP32, batch 1 x 64", ("torch_fp32", 1, 64), ("ort_int8", 1, 64), 3.5),
    ("INT8 vs PyTorch FP32, batch 32 x 64", ("torch_fp32", 32, 64), ("ort_int8", 32, 64), 2.5),
    ("INT8 vs best ORT FP32, batch 32 x 64", ("ort_fp32", 32, 64), ("ort_int8", 32, 64), 2.2),
    ("SmSA end-to-end throughput: INT8 (eval batching) vs PyTorch FP32 naive (pad 128)",
     ("torch_fp32", SMSA_BATCH, "smsa_test", "naive_pad128"), ("ort_int8", SMSA_BATCH, "smsa_test", "eval_sorted"), 4.0),
]
TARGET_MODEL = "bert-base-shaped"
TARGET_THREADS = 2


def find(records, model, backend, batch, seq, threads, batching=None, measure=None):
    """The fastest matching record (for ort_fp32: the best configuration)."""
    hits = [r for r in records if r["model"] == model and r["backend"] == backend and r["batch_size"] == batch
            and r["seq_len"] == seq and r["threads"] == threads and r.get("median_ms") is not None
            and (batching is None or r.get("batching") == batching) and (measure is None or r["measure"] == measure)]
    return min(hits, key=lambda r: r["median_ms"]) if hits else None


def target_rows(records, threads=TARGET_THREADS, model=TARGET_MODEL):
    rows = []
    for label, num, den, target in TARGETS:
        a = find(records, model, num[0], num[1], num[2], threads, *(num[3:] or [None]))
        b = find(records, model, den[0], den[1], den[2], threads, *(den[3:] or [None]))
        ratio = a["median_ms"] / b["median_ms"] if a and b else None
        rows.append({"target": label, "model": model, "threads": threads, "ratio": ratio, "goal": target,
                     "met": None if ratio is None else ratio >= target,
                     "numerator": f"{a['backend']}/{a['variant']}" if a else None,
                     "denominator": f"{b['backend']}/{b['variant']}" if b else None})
    return rows


def md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def cpu_line(cpu) -> str:
    flags = cpu["flags"]
    amx = flags.get("amx_int8") or flags.get("amx_tile")
    shown = {"avx2": flags.get("avx2"), "avx512f": flags.get("avx512f"), "avx512_vnni": flags.get("avx512_vnni"),
             "amx": amx}
    return (f"CPU: **{cpu['model']}**, {os.cpu_count()} logical cores visible; "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in shown.items()))


def write_report(records, meta, out_dir: Path, targets_model: str) -> Path:
    cpu = cpu_line(meta["cpu"])
    L = ["# Inference speed: PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8", "",
         f"Generated {meta['date']} by `python benchmarks/speed.py {' '.join(meta['argv'])}`"
         f"{' (SMOKE: tiny model, 1 repeat, numbers meaningless)' if meta['smoke'] else ''}.", "",
         cpu, "",
         f"Software: Python {meta['python']}, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, "
         f"transformers {meta['transformers']}. Load average at start: {meta['loadavg_start']}, at end: "
         f"{meta['loadavg_end']} (this benchmark's own threads included).", ""]
    L += ["Backends: `torch_fp32`; `ort_fp32` (configurations: exported graph at ORT_ENABLE_ALL, and the "
          "onnxruntime.transformers-fused graph); `ort_int8` (configurations: `quantize(..., QuantConfig())` of the "
          "export, and, where the pipeline has it, `QuantConfig(optimize_graph=True)`: fusion before quantization). "
          "Ratios and charts use the fastest configuration of each backend.", ""]
    L += [f"CPU used by other processes while this benchmark ran: {meta['other_cores']:.2f} cores on average "
          "(system busy time minus this process and its children, over the wall time).", ""]
    # Judged by what other processes used during the run; the load average at the start lags by minutes.
    if meta["other_cores"] > 0.25:
        L += [f"**WARNING: the machine was busy (other processes used "
              f"{meta['other_cores']:.2f} of {os.cpu_count()} cores during the run): "
              "these timings are disturbed. Multi-threaded PyTorch suffers most (its OpenMP threads wait at every "
              "barrier for a thread that another job has descheduled), which inflates the speed-ups over it.**", ""]
    L += [
         "Method: median of repeated runs after warm-up (at least "
         f"{meta['args']['min_repeats']} repeats, {meta['args']['min_repeats_b1']} at batch 1, more while within "
         f"{meta['args']['budget_s']} s per configuration); `torch.set_num_threads(t)` / ORT intra_op t, inter_op 1. "
         "Fixed shapes: random token ids, attention mask all ones, token type ids zeros. PyTorch runs the model as "
         "exported (`attn_implementation=\"eager\"`) under `torch.inference_mode()`. ORT FP32 is measured as exported "
         "(ORT_ENABLE_ALL) and, where `onnxruntime.transformers.optimizer.optimize_model(model_type='bert')` works, "
         "on the fused graph; 'best ORT FP32' is the faster. INT8 is `quantize_onnx_dynamic.quantize` of the export "
         "(QuantConfig() defaults, run through the pipeline's own functions).", ""]
    for name, m in meta["models"].items():
        L += [f"## {name}", "", f"Shape: {m['config']}. {m['note']}", "", f"ORT transformers optimizer: {m['fused_note']}. "
              f"INT8 with optimize_graph: {m.get('int8_opt_note')}.", ""]
        for threads in sorted({r["threads"] for r in records if r["model"] == name}):
            L += [f"### {name}, {threads} thread(s) — {meta['cpu']['model']}", ""]
            rows = []
            latency = [r for r in records if r["model"] == name and r["threads"] == threads and r["measure"] == "latency"]
            for r in sorted(latency, key=lambda r: (r["batch_size"], r["seq_len"], BACKENDS.index(r["backend"]))):
                torch_r = find(records, name, "torch_fp32", r["batch_size"], r["seq_len"], threads)
                sp = torch_r["median_ms"] / r["median_ms"] if torch_r else float("nan")
                p95 = f"{r['p95_ms']:.2f}" if r["batch_size"] == 1 else ""
                rows.append([f"{r['batch_size']} x {r['seq_len']}", r["backend"], r["variant"], f"{r['median_ms']:.2f}",
                             p95, f"{r['samples_per_s']:.1f}", f"{sp:.2f}x", r["n_repeats"]])
            if rows:
                L += [md_table(["batch x seq", "backend", "configuration", "median ms", "p95 ms (batch 1)",
                                "samples/s", "speed-up vs torch", "n"], rows), ""]
            srows = [[r["backend"], r["variant"], r["batching"], f"{r['median_ms'] / 1e3:.2f}", f"{r['samples_per_s']:.1f}",
                      r["n_repeats"]]
                     for r in records if r["model"] == name and r["threads"] == threads and r["measure"] == "smsa_end_to_end"]
            if srows:
                L += [f"SmSA test texts end to end ({meta['n_texts']} texts, tokenization included, batch {SMSA_BATCH}; "
                      "eval_sorted = `common.make_batches`: sorted by length, padded per batch; naive_pad128 = file "
                      "order, padded to 128):", "",
                      md_table(["backend", "configuration", "batching", "median s per pass", "texts/s", "n"], srows), ""]
    mem = [r for r in records if r["measure"] == "peak_rss"]
    if mem:
        L += ["## Model size and peak memory", "", cpu, "",
              "Peak RSS of a fresh process that loads the model and predicts one 32 x 128 batch, read as `VmHWM` from "
              "/proc/self/status (the child's own address space: on Linux `ru_maxrss` survives fork + exec and so "
              "reports the benchmark parent's peak; it is kept in the JSON as `ru_maxrss_mb`); "
              "'imports only' is a process that imports the same libraries and loads nothing (torch + transformers for "
              "PyTorch, onnxruntime for ORT), so 'model share' = peak - imports only.", ""]
        rows = []
        for r in mem:
            rows.append([r["model"], r["backend"] + (f" ({r['variant']})" if r.get("variant") else ""), f"{r['size_mb']:.1f}", f"{r['peak_rss_mb']:.0f}",
                         f"{r['baseline_rss_mb']:.0f}", f"{r['model_rss_mb']:.0f}"])
        L += [md_table(["model", "backend", "size on disk MB", "peak RSS MB", "imports only MB", "model share MB"], rows), ""]
        for name in meta["models"]:
            t = next((r for r in mem if r["model"] == name and r["backend"] == "torch_fp32"), None)
            q = next((r for r in mem if r["model"] == name and r["backend"] == "ort_int8" and not r.get("variant")), None)
            if t and q:
                L.append(f"- {name}: INT8 vs PyTorch FP32 — size {t['size_mb'] / q['size_mb']:.2f}x smaller, peak RSS "
                         f"{t['peak_rss_mb'] / q['peak_rss_mb']:.2f}x lower, model share {t['model_rss_mb'] / max(q['model_rss_mb'], 1e-9):.2f}x lower.")
        L.append("")
    trows = target_rows(records, model=targets_model)
    L += [f"## Targets (issue 3): {targets_model}, {TARGET_THREADS} threads, ratios of median latencies from this run", "",
          cpu, ""]
    L += [md_table(["target", "measured ratio", "goal", "status", "compared"],
                   [[t["target"], "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x", f">= {t['goal']}x",
                     "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met"),
                     f"{t['numerator']} / {t['denominator']}"] for t in trows]), ""]
    others = [n for n in meta["models"] if n != targets_model]
    for name in others:
        L += [f"For reference, the same ratios on {name} ({TARGET_THREADS} threads; the targets are set for "
              f"{targets_model}):", ""]
        L += [md_table(["ratio", "measured", "goal on " + targets_model],
                       [[t["target"], "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}x", f">= {t['goal']}x"]
                        for t in target_rows(records, model=name)]), ""]
    L += ["![speed-up chart](speed.png)", ""]
    path = out_dir / "speed.md"
    path.write_text("\n".join(L))
    return path


def write_chart(records, meta, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(meta["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    threads = max({r["threads"] for r in records})
    for ax, name in zip(axes[0], models):
        keys = []
        for r in records:
            if r["model"] == name and r["threads"] == threads and r["measure"] in ("latency", "smsa_end_to_end"):
                k = (r["batch_size"], r["seq_len"])
                if k not in keys:
                    keys.append(k)
        labels, fp32, int8 = [], [], []
        for b, s in keys:
            if s == "smsa_test":
                base = find(records, name, "torch_fp32", b, s, threads, "naive_pad128")
                f = find(records, name, "ort_fp32", b, s, threads, "eval_sorted")
                q = find(records, name, "ort_int8", b, s, threads, "eval_sorted")
                labels.append("SmSA e2e\n(vs torch naive)")
            else:
                base = find(records, name, "torch_fp32", b, s, threads)
                f, q = find(records, name, "ort_fp32", b, s, threads), find(records, name, "ort_int8", b, s, threads)
                labels.append(f"{b} x {s}")
            fp32.append(base["median_ms"] / f["median_ms"] if base and f else 0)
            int8.append(base["median_ms"] / q["median_ms"] if base and q else 0)
        x = np.arange(len(labels))
        ax.bar(x - 0.2, fp32, 0.4, label="ORT FP32 (best)")
        ax.bar(x + 0.2, int8, 0.4, label="ORT INT8")
        for i, (a, b) in enumerate(zip(fp32, int8)):
            ax.text(i - 0.2, a, f"{a:.1f}", ha="center", va="bottom", fontsize=8)
            ax.text(i + 0.2, b, f"{b:.1f}", ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("speed-up vs PyTorch FP32 (median latency)")
        ax.set_title(f"{name}, {threads} threads", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{meta['cpu']['model']} — " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in meta["cpu"]["flags"].items()
                                                         if k in ("avx2", "avx512f", "avx512_vnni", "amx_int8"))
                 + (" (SMOKE)" if meta["smoke"] else ""), fontsize=9)
    fig.tight_layout()
    path = out_dir / "speed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    """Re-render speed.md and speed.png from the records speed.py saved (it saves after every model, so an
    interrupted run can be reported for the models it finished: --models)."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--dir", default=str(Path(__file__).resolve().parent / "reports"), help="where speed.json is")
    p.add_argument("--models", default=None, help="comma list of the models to report (default: all recorded)")
    args = p.parse_args(argv)
    out = Path(args.dir)
    records = json.loads((out / "speed.json").read_text())
    meta = json.loads((out / "speed.meta.json").read_text())
    if args.models:
        keep = args.models.split(",")
        records = [r for r in records if r["model"] in keep]
        meta["models"] = {k: v for k, v in meta["models"].items() if k in keep}
        meta["argv"] = meta["argv"] + [f"(interrupted; reported by speed_report.py for {args.models} only)"]
    models = list(dict.fromkeys(r["model"] for r in records))
    write_report(records, meta, out, TARGET_MODEL if TARGET_MODEL in models else models[0])
    write_chart(records, meta, out)


if __name__ == "__main__":
    main()
