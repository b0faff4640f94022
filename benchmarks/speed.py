"""CPU inference speed and memory: PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 (issue 5 part 2, issue 3).

Models (--models): the pipeline's default model (prepare_model.resolve_model('default'), pretrained weights, new 3-label
head) and a BERT-base-shaped model built from IndoBERT-base's configuration (vocabulary 50,000, 12 layers, hidden 768,
12 heads, intermediate 3072, random weights); or any model folder / hub name, read with its own tokenizer (BERT or
XLM-R style). All are exported with export_to_onnx.export and quantized with quantize_onnx_dynamic.quantize (after
quant_sim.plan_quantization), so an improved pipeline is measured automatically. The report and chart are written by
speed_report.py.

Measured: fixed shapes (batch 1 and 32 x sequence 64 and 128, random ids), and the real SmSA test texts end to end
(tokenization included) with the evaluation's batching (sorted by length, padded per batch) and, for PyTorch, the
naive way (file order, padding to 128); 1 and 2 threads; median of repeated runs after warm-up (p95 at batch 1);
model sizes on disk; peak resident memory of a fresh process that loads each model and predicts a 32x128 batch.

    python benchmarks/speed.py                      # full run -> benchmarks/reports/speed.{md,png,json}
    python benchmarks/speed.py --models default,path/to/model   # the default model beside another one
    python benchmarks/speed.py --smoke --out-dir /tmp/s --json /tmp/s/out.json   # tiny model, about a minute
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

from common import make_batches, model_input_names  # noqa: E402
from prepare_model import resolve_model  # noqa: E402
from common import cpu_info  # noqa: E402
from speed_report import SMSA_BATCH, TARGET_MODEL, write_chart, write_report  # noqa: E402

SMSA_TEST = ROOT.parent / "shared" / "data" / "smsa" / "test.csv"
DEFAULT_REPORT_DIR = ROOT / "benchmarks" / "reports"
DEFAULT_CACHE_DIR = ROOT / "benchmarks" / ".cache"
OPSET = 17
SMSA_MAX_LEN = 128
# The files whose change makes cached exports stale.
PIPELINE_FILES = ("export_to_onnx.py", "quantize_onnx_dynamic.py", "quant_sim.py")

# IndoBERT-base (indobenchmark/indobert-base-p1) shape.
BERT_BASE = dict(vocab_size=50000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
TINY = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=512, type_vocab_size=2)



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- models


def pipeline_hash() -> str:
    import onnxruntime
    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__} {onnxruntime.__version__} {transformers.__version__}".encode())
    for f in PIPELINE_FILES:
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()[:12]


def build_model(name: str, spec: dict, tokenizer, cache: Path) -> dict:
    """Torch model (save_pretrained folder), FP32 ONNX, optimizer-fused FP32 ONNX (when it works), INT8 ONNX."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from export_to_onnx import export
    from quant_sim import QuantConfig, plan_quantization
    from quantize_onnx_dynamic import quantize

    source = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "note"}, sort_keys=True).encode())
    folder = cache / f"{name}-{pipeline_hash()}-{source.hexdigest()[:8]}"
    torch_dir, fp32, int8, fused = folder / "torch", folder / "model.onnx", folder / "model_int8.onnx", folder / "model_fused.onnx"
    info_path = folder / "info.json"
    torch.manual_seed(0)  # the same random head / weights as a cached export of this model
    if spec["kind"] == "pretrained":
        model = AutoModelForSequenceClassification.from_pretrained(spec["path"], num_labels=3, attn_implementation="eager",
                                                                   ignore_mismatched_sizes=True)  # any head: a new 3-label one
    else:
        model = BertForSequenceClassification(BertConfig(**spec["config"], num_labels=3, attn_implementation="eager"))
    model.eval()
    if info_path.is_file():
        log(f"{name}: using cached export in {folder}")
        return {**json.loads(info_path.read_text()), "model": model, "folder": folder}
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(torch_dir)
    names = model_input_names(tokenizer, model.config)
    rng = np.random.default_rng(0)
    example = {"input_ids": rng.integers(5, min(model.config.vocab_size, 1000), (2, 16), dtype=np.int64),
               "attention_mask": np.ones((2, 16), np.int64), "token_type_ids": np.zeros((2, 16), np.int64)}
    example = {k: example[k] for k in names}
    t0 = time.perf_counter()
    export(model, example, fp32, OPSET)
    qcfg = plan_quantization(model, QuantConfig())
    quantize(fp32, int8, qcfg)
    log(f"{name}: exported and quantized in {time.perf_counter() - t0:.0f} s")
    int8_opt, int8_opt_note = folder / "model_int8_optimized.onnx", None
    if "optimize_graph" in QuantConfig.__dataclass_fields__:  # the pipeline's graph-optimised INT8, where it has one
        try:
            t0 = time.perf_counter()
            qopt = plan_quantization(model, QuantConfig(optimize_graph=True))
            quantize(fp32, int8_opt, qopt, model.config.to_dict())
            int8_opt_note = f"built in {time.perf_counter() - t0:.0f} s"
        except Exception as e:
            int8_opt_note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            int8_opt.unlink(missing_ok=True)
    else:
        int8_opt_note = "the pipeline has no QuantConfig.optimize_graph"
    log(f"{name}: INT8 with optimize_graph: {int8_opt_note}")
    fused_note = try_ort_optimizer(fp32, fused, model.config)
    info = {"input_names": names, "config": {k: getattr(model.config, k) for k in BERT_BASE},
            "fp32": str(fp32), "int8": str(int8), "fused": str(fused) if fused.is_file() else None,
            "int8_opt": str(int8_opt) if int8_opt.is_file() else None, "int8_opt_note": int8_opt_note,
            "fused_note": fused_note, "torch_dir": str(torch_dir),
            "size_mb": {"torch_fp32": (torch_dir / "model.safetensors").stat().st_size / 1e6,
                        "ort_fp32": onnx_size_mb(fp32), "ort_int8": onnx_size_mb(int8)},
            "variant_size_mb": {p.name: onnx_size_mb(p) for p in (fp32, fused, int8, int8_opt) if p.is_file()}}
    info_path.write_text(json.dumps(info, indent=2))
    return {**info, "model": model, "folder": folder}


def onnx_size_mb(path: Path) -> float:
    """The .onnx file plus any external-data files beside it."""
    path = Path(path)
    extra = [p for p in path.parent.glob(path.name + ".data")]
    return (path.stat().st_size + sum(p.stat().st_size for p in extra)) / 1e6


def try_ort_optimizer(fp32: Path, out: Path, config) -> str:
    """onnxruntime.transformers' BERT fusion (Attention, SkipLayerNormalization, ...) of the exported FP32 graph."""
    try:
        import logging

        from onnxruntime.transformers.optimizer import optimize_model

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        opt = optimize_model(str(fp32), model_type="bert", num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(out))
        return "fused: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
    except Exception as e:  # the fusion is optional: report why it was skipped
        return f"optimizer failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


# ---------------------------------------------------------------- predictors


def torch_predictor(model, threads: int):
    import torch

    def predict(batch):
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return predict


def ort_predictor(path, threads: int):
    from runtime import ort_session

    sess = ort_session(Path(path), threads)
    names = [i.name for i in sess.get_inputs()]
    return lambda batch: sess.run(None, {k: batch[k] for k in names})[0]


def predictors(m: dict, threads: int):
    """(backend, variant, predict) for every configuration measured, built one at a time and dropped after use, so
    no idle ONNX Runtime thread pool (its threads spin-wait after a run) competes with the next configuration."""
    import gc

    yield "torch_fp32", "eager_inference_mode", torch_predictor(m["model"], threads), m["size_mb"]["torch_fp32"]
    paths = [("ort_fp32", "exported_ORT_ENABLE_ALL", m["fp32"])]
    if m.get("fused"):
        paths.append(("ort_fp32", "ort_transformers_optimizer", m["fused"]))
    paths.append(("ort_int8", "quantize_dynamic", m["int8"]))
    if m.get("int8_opt"):
        paths.append(("ort_int8", "optimize_graph+quantize_dynamic", m["int8_opt"]))
    for backend, variant, path in paths:
        time.sleep(0.5)  # let the previous runtime's worker threads stop spinning
        predict = ort_predictor(path, threads)
        yield backend, variant, predict, m["variant_size_mb"][Path(path).name]
        del predict
        gc.collect()


# ---------------------------------------------------------------- timing


def time_runs(fn, warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> list[float]:
    """Seconds per call after warm-up: at least min_repeats, then more while within budget_s, at most max_repeats."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def stats_ms(times: list[float]) -> dict:
    a = np.array(times) * 1e3
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "min_ms": float(a.min()),
            "n_repeats": len(a)}


def fixed_batch(names, batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    full = {"input_ids": rng.integers(5, vocab, (batch, seq), dtype=np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}
    return {k: full[k] for k in names}


def bench_fixed(name, m, args, records):
    vocab = m["config"]["vocab_size"]
    for threads in args.threads:
        for backend, variant, predict, size in predictors(m, threads):
            for batch in args.batch_sizes:
                for seq in args.seq_lens:
                    inputs = fixed_batch(m["input_names"], batch, seq, vocab)
                    min_rep = args.min_repeats_b1 if batch == 1 else args.min_repeats
                    times = time_runs(lambda: predict(inputs), args.warmup, min_rep, args.max_repeats, args.budget_s)
                    rec = {"model": name, "backend": backend, "variant": variant, "measure": "latency",
                           "batch_size": batch, "seq_len": seq, "threads": threads, **stats_ms(times),
                           "size_mb": size}
                    rec["samples_per_s"] = batch / (rec["median_ms"] / 1e3)
                    records.append(rec)
                    log(f"{name} {backend:10s} {variant:32s} b{batch:<3d} s{seq:<4d} t{threads}: "
                        f"median {rec['median_ms']:9.2f} ms (n={rec['n_repeats']})")


def bench_smsa(name, m, tokenizer, texts, args, records):
    """End to end over the test texts, tokenization included."""
    vocab = m["config"]["vocab_size"]
    names = m["input_names"]
    clip = len(tokenizer) > vocab

    def clipped(batch):
        if clip:
            batch = {**batch, "input_ids": np.minimum(batch["input_ids"], vocab - 1)}
        return batch

    def eval_sorted(predict):
        for _, batch in make_batches(texts, tokenizer, names, SMSA_MAX_LEN, SMSA_BATCH):
            predict(clipped(batch))

    def naive(predict):
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=SMSA_MAX_LEN, return_tensors="np")
        for start in range(0, len(texts), SMSA_BATCH):
            predict(clipped({k: enc[k][start:start + SMSA_BATCH].astype(np.int64) for k in names}))

    longest = clipped(max((b for _, b in make_batches(texts, tokenizer, names, SMSA_MAX_LEN, SMSA_BATCH)),
                          key=lambda b: b["input_ids"].size))
    naive_warm = fixed_batch(names, SMSA_BATCH, SMSA_MAX_LEN, min(vocab, len(tokenizer)))
    for threads in args.smsa_threads(name):
        for backend, variant, predict, size in predictors(m, threads):
            plans = [("eval_sorted", eval_sorted, longest)]
            if backend == "torch_fp32":
                plans.append(("naive_pad128", naive, naive_warm))
            for batching, run, warm in plans:
                predict(warm)  # warm-up on the largest shape of the pass
                times = time_runs(lambda: run(predict), 0, args.smsa_min_repeats, args.smsa_max_repeats,
                                  args.smsa_budget_s)
                rec = {"model": name, "backend": backend, "variant": variant, "measure": "smsa_end_to_end",
                       "batch_size": SMSA_BATCH, "seq_len": "smsa_test", "batching": batching, "threads": threads,
                       **stats_ms(times), "size_mb": size, "n_texts": len(texts),
                       "ids_clipped_to_vocab": clip}
                rec["samples_per_s"] = len(texts) / (rec["median_ms"] / 1e3)
                records.append(rec)
                log(f"{name} {backend:10s} {variant:32s} smsa {batching:12s} t{threads}: "
                    f"{rec['samples_per_s']:8.1f} texts/s (n={rec['n_repeats']})")


# ---------------------------------------------------------------- peak memory

CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, {root!r})
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import numpy as np
backend, path, threads, names, vocab, load = {backend!r}, {path!r}, {threads}, {names!r}, {vocab}, {load}
rng = np.random.default_rng(0)
full = {{"input_ids": rng.integers(5, vocab, (32, 128), dtype=np.int64),
        "attention_mask": np.ones((32, 128), np.int64), "token_type_ids": np.zeros((32, 128), np.int64)}}
batch = {{k: full[k] for k in names}}
if backend == "torch_fp32":
    import torch
    from transformers import AutoModelForSequenceClassification
    torch.set_num_threads(threads)
    if load:
        model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
        with torch.inference_mode():
            model(**{{k: torch.from_numpy(v) for k, v in batch.items()}})
else:
    import onnxruntime
    from runtime import ort_session
    if load:
        sess = ort_session(path, threads)
        sess.run(None, batch)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({{"peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else None,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def peak_rss(backend: str, path, threads: int, names, vocab: int, load: bool) -> dict:
    code = CHILD.format(root=str(ROOT), backend=backend, path=str(path), threads=threads, names=list(names),
                        vocab=vocab, load=load)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {backend} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(name, m, args, records):
    threads = max(args.threads)
    vocab = min(m["config"]["vocab_size"], 1000)
    jobs = {("torch_fp32", True): m["torch_dir"], ("ort_fp32", True): m["fp32"], ("ort_int8", True): m["int8"],
            ("torch_fp32", False): m["torch_dir"], ("ort_fp32", False): m["fp32"]}
    if m.get("int8_opt"):
        jobs[("ort_int8", "optimized")] = m["int8_opt"]
    # Memory does not depend on the CPU time the children get, so they may run side by side.
    with ThreadPoolExecutor(max_workers=args.memory_workers) as pool:
        futs = {k: pool.submit(peak_rss, k[0], p, threads, m["input_names"], vocab, k[1] is not False)
                for k, p in jobs.items()}
        res = {k: f.result() for k, f in futs.items()}
    for (backend, load), path in jobs.items():
        if load is False:
            continue
        base = res[("torch_fp32" if backend == "torch_fp32" else "ort_fp32", False)]["peak_rss_mb"]
        peak = res[(backend, load)]["peak_rss_mb"]
        size = m["size_mb"]["torch_fp32"] if backend == "torch_fp32" else m["variant_size_mb"][Path(path).name]
        variant = "optimize_graph+quantize_dynamic" if load == "optimized" else None
        records.append({"model": name, "backend": backend, "variant": variant, "measure": "peak_rss", "batch_size": 32,
                        "seq_len": 128, "threads": threads, "median_ms": None, "size_mb": size,
                        "peak_rss_mb": peak, "baseline_rss_mb": base, "model_rss_mb": peak - base,
                        "ru_maxrss_mb": res[(backend, load)]["ru_maxrss_mb"]})
        log(f"{name} {backend:10s} {variant or '':32s} peak RSS {peak:8.1f} MB (imports only: {base:.1f} MB)")


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 repeat, temp output dir: for the test suite")
    p.add_argument("--out-dir", default=None, help=f"report folder (default {DEFAULT_REPORT_DIR}; smoke: a temp dir)")
    p.add_argument("--json", default=None, help="also write the records here (always written as speed.json in out-dir)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="exported models, keyed by pipeline source hash")
    p.add_argument("--models", default=None,
                   help="comma list of: default (the pipeline's default model), bert-base-shaped (random weights), "
                        "tiny, or a model folder / hub name (default: default,bert-base-shaped; smoke: tiny)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--seq-lens", default="64,128")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--min-repeats-b1", type=int, default=20, help="minimum repeats at batch 1 (for p95)")
    p.add_argument("--max-repeats", type=int, default=100)
    p.add_argument("--budget-s", type=float, default=3.0, help="keep repeating a configuration while within this time")
    p.add_argument("--smsa", default=str(SMSA_TEST), help="test CSV (text column); skipped when missing")
    p.add_argument("--smsa-threads-small", default="1,2", help="SmSA thread counts for every model but bert-base-shaped")
    p.add_argument("--smsa-threads-large", default="2",
                   help="SmSA thread counts for the BERT-base-shaped model (a naive pass takes minutes at 1 thread)")
    p.add_argument("--smsa-min-repeats", type=int, default=1)
    p.add_argument("--smsa-max-repeats", type=int, default=3)
    p.add_argument("--smsa-budget-s", type=float, default=20.0)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-workers", type=int, default=2,
                   help="memory children run at once (peak RSS does not depend on CPU time)")
    args = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    args.threads, args.batch_sizes, args.seq_lens = ints(args.threads), ints(args.batch_sizes), ints(args.seq_lens)
    small, large = ints(args.smsa_threads_small), ints(args.smsa_threads_large)
    if args.smoke:
        args.warmup, args.min_repeats, args.min_repeats_b1, args.max_repeats, args.budget_s = 1, 1, 1, 1, 0.0
        args.smsa_min_repeats, args.smsa_max_repeats, args.smsa_budget_s = 1, 1, 0.0
        args.memory_workers = 3
        args.seq_lens = [64]  # the targets' shape; keeps the smoke run well under a minute on a busy machine
        small = large = args.threads
    args.models = args.models or ("tiny" if args.smoke else "default,bert-base-shaped")
    args.smsa_threads = lambda name: large if name == "bert-base-shaped" else small
    return args


def model_specs(models: str) -> dict:
    """name -> how to build the model and which tokenizer reads the texts. 'default' (prepare_model.resolve_model) or any
    model folder / hub name: its pretrained weights and its own tokenizer (BERT or XLM-R style: token_type_ids only
    where the model has them); 'bert-base-shaped' and 'tiny': random weights of that shape, read with the default
    model's tokenizer (ids clipped to the vocabulary where they would exceed it)."""
    default_source = None
    specs = {}
    for m in [m.strip() for m in models.split(",") if m.strip()]:
        if m in ("bert-base-shaped", "tiny"):
            default_source = default_source or resolve_model("default")
            specs[m] = {"kind": "config", "config": BERT_BASE if m == "bert-base-shaped" else TINY,
                        "tokenizer": default_source,
                        "note": ("IndoBERT-base's configuration" if m == "bert-base-shaped" else
                                 "SMOKE model: BertConfig hidden 32, 2 layers") + ", random weights (speed does not "
                                f"depend on them); texts read with the default model's tokenizer ({default_source}), "
                                "ids clipped to the vocabulary where they would exceed it."}
        else:
            source = resolve_model(m)
            if m != "default" and not Path(source).is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
                raise SystemExit(f"--models {m}: no such folder (and the hub is offline)")
            name = m if m == "default" else Path(m.rstrip("/")).name
            specs[name] = {"kind": "pretrained", "path": source, "tokenizer": source,
                           "note": f"`{m}`: the pretrained weights of {source} with a new 3-label head, read with "
                                   "its own tokenizer."}
    if not specs:
        raise SystemExit("--models names no model")
    return specs


def cpu_snapshot() -> tuple[float, float, float]:
    """Wall time, busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for children."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = psutil.Process().cpu_times()
    return time.time(), busy, own.user + own.system + own.children_user + own.children_system


def other_cores(start) -> float:
    end = cpu_snapshot()
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / max(end[0] - start[0], 1e-9))


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime
    import pandas as pd
    import torch
    import transformers
    from transformers import AutoTokenizer

    started = time.perf_counter()
    snap = cpu_snapshot()
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="speed-smoke-"))
    else:
        out_dir = DEFAULT_REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="speed-models-")) if args.smoke else Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    specs = model_specs(args.models)

    texts = None
    if args.smsa and Path(args.smsa).is_file():
        texts = pd.read_csv(args.smsa, dtype=str, keep_default_na=False)["text"].tolist()
        if args.smoke:
            texts = texts[:64]
    else:
        log(f"SmSA file {args.smsa} not found: end-to-end measurements skipped")

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:], "smoke": args.smoke,
            "cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "models": {},
            "n_texts": len(texts) if texts else 0,
            "args": {k: v for k, v in vars(args).items() if k != "smsa_threads"}}
    records: list[dict] = []
    json_paths = [out_dir / "speed.json"] + ([Path(args.json)] if args.json else [])

    def save():
        meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["other_cores"] = other_cores(snap)
        for p in json_paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(records, indent=2))
        (out_dir / "speed.meta.json").write_text(json.dumps(meta, indent=2, default=str))

    try:
        for name, spec in specs.items():
            log(f"building {name}")
            tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
            m = build_model(name, spec, tokenizer, cache)
            meta["models"][name] = {"config": m["config"], "note": spec["note"], "fused_note": m["fused_note"],
                                    "input_names": m["input_names"],
                                    "int8_opt_note": m.get("int8_opt_note"),
                                    "size_mb": m["size_mb"]}
            log(f"{name}: sizes {m['size_mb']}; {m['fused_note']}")
            bench_fixed(name, m, args, records)
            save()
            if texts:
                bench_smsa(name, m, tokenizer, texts, args, records)
                save()
            if not args.no_memory:
                bench_memory(name, m, args, records)
                save()
            del m
        save()
        report = write_report(records, meta, out_dir, TARGET_MODEL if "bert-base-shaped" in specs else next(iter(specs)))
        chart = write_chart(records, meta, out_dir)
        log(f"wrote {report}, {chart}, {', '.join(map(str, json_paths))} in {time.perf_counter() - started:.0f} s")
        print(report.read_text().split("## Targets", 1)[-1])
    finally:
        if args.smoke:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
