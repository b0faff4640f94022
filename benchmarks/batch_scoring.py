"""Throughput and memory of scoring whole files: predict.py (1 and 2 workers, batched), the Spark engine in local
mode, and a plain one-process Predictor(per_text=True) loop, on SmSA texts repeated to --rows rows.

    python benchmarks/batch_scoring.py --run-name RUN                        # 100,000 rows; writes the report
    python benchmarks/batch_scoring.py --smoke --run-name tiny --skip-spark  # seconds, numbers meaningless

Every configuration runs as its own process, timed end to end (start, model load and Spark start included),
while the peak RSS of its whole process tree (workers, the Spark JVM and its Python workers) is sampled with
psutil. Peak memory is measured on --small-rows and --rows rows, to show it does not grow with the file. Kill and
resume: a predict.py run on --small-rows rows is killed (SIGKILL) after half of its chunks, resumed, and compared
byte for byte with an uninterrupted run. Writes batch_scoring.md and batch_scoring.json to --out-dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import MODELS_DIR, PipelineError, cpu_info, isa_text, main_guard, save_report  # noqa: E402

SMSA = ROOT.parent / "shared" / "data" / "smsa"
DEFAULT_REPORT_DIR = ROOT / "benchmarks" / "reports"
PLAIN_LOOP_CHUNK = 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-name", default=None, help=f"a run folder in {MODELS_DIR} (with --smoke: default a tiny "
                                                    f"run built in the work dir)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--small-rows", type=int, default=10_000, help="the smaller file of the memory comparison")
    p.add_argument("--chunk-rows", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="of the batched predict.py configuration")
    p.add_argument("--skip-spark", action="store_true")
    p.add_argument("--plain-loop-small", action="store_true",
                   help="time the plain loop on --small-rows rows only: its rate is steady (one process, one text at "
                        "a time), and at 100,000 rows it is the longest configuration on a slow CPU")
    p.add_argument("--smoke", action="store_true", help="a few hundred rows, for the tests; numbers meaningless")
    p.add_argument("--out-dir", default=None, help=f"default {DEFAULT_REPORT_DIR} (smoke: the work dir)")
    p.add_argument("--work-dir", default=None, help="input and output files (default: a temporary folder)")
    p.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    p.add_argument("--plain-loop", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.small_rows, args.chunk_rows = 600, 200, 50
    if args.small_rows < 4 * args.chunk_rows:
        # predict.py starts a worker process per chunk in flight, up to --workers: with fewer chunks the small
        # file would not use both workers, and the memory comparison would measure the number of processes
        p.error("--small-rows must be at least 4 * --chunk-rows (so that 2 workers are both used)")
    return args


# ------------------------------------------------------------------ inputs and runs


def smsa_texts() -> list[str]:
    import pandas as pd

    files = [SMSA / f"{s}.csv" for s in ("train", "val", "test")]
    if not all(f.is_file() for f in files):
        raise PipelineError(f"SmSA CSVs not found in {SMSA} (train/val/test.csv)")
    return [t for f in files for t in pd.read_csv(f, dtype=str, keep_default_na=False)["text"]]


def write_input(texts, n: int, path: Path) -> Path:
    import pandas as pd

    rows = [texts[i % len(texts)] for i in range(n)]
    pd.DataFrame({"id": range(n), "text": rows}).to_csv(path, index=False)
    return path


def smoke_run(work: Path) -> tuple[str, dict]:
    """A tiny BERT trained for 1 epoch on 300 rows, exported and quantized in work/models (a few minutes)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import run_step, tiny_workspace, train_tiny

    ws = work / "smoke"
    ws.mkdir(parents=True, exist_ok=True)
    w = tiny_workspace(ws)
    train_tiny(w, "tiny", "--epochs", 1, "--max-train-samples", 300)
    for script in ("export_to_onnx.py", "quantize_onnx_dynamic.py"):
        run_step(script, "--run-name", "tiny", env=w["env"])
    return "tiny", w["env"]


# ------------------------------------------------------------------ measuring a process tree


def run_measured(cmd, env, poll_s: float = 0.2) -> dict:
    """Run cmd; wall seconds and the peak of the summed RSS of the process and all its descendants."""
    import psutil

    start = time.perf_counter()
    # output to files, not pipes: a chatty child (Spark's logs) would block on a full pipe while we poll
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out_f, stderr=err_f, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(poll_s)
    proc.wait()
    wall = time.perf_counter() - start
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise PipelineError(f"{' '.join(map(str, cmd[1:4]))} ... failed ({proc.returncode}): "
                            f"{(err or out).strip().splitlines()[-1] if (err or out).strip() else ''}")
    summary = (out.strip().splitlines() or [""])[-1]
    match = re.search(r"in ([0-9.]+) s, ([0-9.]+) rows/s", summary)
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "summary": summary,
            "tool_rows_per_s": float(match.group(2)) if match else None}


def predict_cmd(run_name, src, out, *extra):
    return [sys.executable, str(ROOT / "predict.py"), "--run-name", run_name, "--input", str(src), "--output",
            str(out), "--no-progress", *map(str, extra)]


def plain_loop(run_name: str, src: str, out: str) -> None:
    """What one writes without predict.py: read the file, Predictor(per_text=True).predict on chunks of texts in
    one process, write the labels and probabilities."""
    import pandas as pd

    from predictor import Predictor

    p = Predictor(MODELS_DIR / run_name, per_text=True)
    start = time.perf_counter()
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    texts, preds = df["text"].tolist(), []
    for i in range(0, len(texts), PLAIN_LOOP_CHUNK):
        preds += p.predict(texts[i:i + PLAIN_LOOP_CHUNK])
    df["label"] = [r["label"] for r in preds]
    df["score"] = [r["score"] for r in preds]
    for label in p.labels:
        df[f"prob_{label}"] = [r["probabilities"][label] for r in preds]
    df.to_csv(out, index=False)
    elapsed = time.perf_counter() - start
    print(f"scored {len(df)} rows into {out} in {elapsed:.1f} s, {len(df) / elapsed:.1f} rows/s")


def kill_and_resume(run_name, src, work: Path, env, chunk_rows: int, n_rows: int) -> dict:
    """Kill predict.py with a real SIGKILL once its progress file records half its chunks, resume, and compare with an
    uninterrupted run."""
    whole, out = work / "resume-whole.csv", work / "resume-out.csv"
    chunk_rows = max(1, min(chunk_rows, n_rows // 4))  # at least 4 chunks
    args = ["--chunk-rows", chunk_rows]
    subprocess.run(predict_cmd(run_name, src, whole, *args), env=env, cwd=ROOT, check=True, capture_output=True)
    k = n_rows // chunk_rows // 2
    progress = Path(f"{out}.progress.json")
    proc = subprocess.Popen(predict_cmd(run_name, src, out, *args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    def chunks_done() -> int:
        try:
            return json.loads(progress.read_text())["chunks_done"]
        except (OSError, ValueError):  # not written yet, or removed when the job finished
            return 0

    while proc.poll() is None and chunks_done() < k:
        time.sleep(0.002)
    recorded = chunks_done()
    if proc.poll() is None:
        proc.kill()  # SIGKILL
    proc.wait()
    existed = out.exists()
    subprocess.run(predict_cmd(run_name, src, out, *args, "--resume"), env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return {"chunk_rows": chunk_rows, "killed_after_chunks": recorded,
            "killed_by_sigkill": proc.returncode == -signal.SIGKILL,
            "output_existed_before_completion": existed, "identical": out.read_bytes() == whole.read_bytes()}


# ------------------------------------------------------------------ report


def ratio(a, b):
    return a / b if a and b else None


def render_report(meta: dict, results: list[dict], memory: list[dict], resume: dict, targets: dict) -> str:
    lines = [f"# Scoring whole files: predict.py and Spark{' (SMOKE: tiny model, numbers meaningless)' if meta['smoke'] else ''}",
             "", f"- date: {meta['date']}; total time {meta['total_s'] / 60:.1f} min",
             f"- CPU: {meta['cpu']['model']} ({os.cpu_count()} logical cores); ISA flags: {isa_text(meta['cpu'])}",
             f"- machine load average at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}"
             + (f"; {meta['note']}" if meta["note"] else ""),
             f"- run: `{meta['run_name']}` (max length {meta['max_length']}), model sha256 {meta['model_sha256'][:16]}...",
             f"- input: {meta['rows']:,} rows of SmSA texts (train+val+test, {meta['distinct_texts']:,} distinct, "
             f"repeated) as CSV `id,text`; chunks of {meta['chunk_rows']} rows",
             "- rows/s: rows / wall time of the whole command (process start, model load and Spark start included); "
             "peak RSS: summed over the process tree (workers, JVM, Spark's Python workers), sampled every 0.2 s",
             "", "## Throughput", "",
             "| configuration | deterministic per text | rows | wall s | rows/s end to end | vs plain loop | "
             "rows/s after start-up | vs plain loop | peak RSS MB |",
             "|---|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    plain = next(r for r in results if r["name"] == "plain loop")
    for r in results:
        lines.append(f"| {r['name']} (`{r['cmd']}`) | {'yes' if r['per_text'] else 'no'} | {r['rows']:,} | "
                     f"{r['wall_s']:.1f} | "
                     f"{r['rows_per_s']:.1f} | {r['rows_per_s'] / plain['rows_per_s']:.2f}x | "
                     f"{r['tool_rows_per_s'] or 0:.1f} | "
                     f"{fmt_ratio(ratio(r['tool_rows_per_s'], plain['tool_rows_per_s']))} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "After start-up: the rate each tool prints, from after the main process loaded the run (plain loop, "
              "predict.py) or started its Spark session, to the end; the start-up and model loading of predict.py's "
              "worker processes and of Spark's Python workers are inside it."]
    lines += ["", "## Peak memory against file size", "", "| configuration | rows | peak RSS MB |", "|---|---:|---:|"]
    lines += [f"| {m['name']} | {m['rows']:,} | {m['peak_rss_mb']:.0f} |" for m in memory]
    lines += ["", "## Kill and resume", "",
              f"predict.py on {meta['small_rows']:,} rows killed with SIGKILL from outside once its progress file recorded "
              f"{resume['killed_after_chunks']} chunks of {resume['chunk_rows']} rows: killed by SIGKILL "
              f"{resume['killed_by_sigkill']}; a file under the final name before completion: "
              f"{resume['output_existed_before_completion']}; after `--resume`, byte-identical to an uninterrupted "
              f"run: {resume['identical']}.", "", "## Targets (ratios measured in this run)", "",
              "| target | measured | met |", "|---|---|:---:|"]
    for t in targets.values():
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def fmt_ratio(x, suffix="x"):
    return "n/a" if x is None else f"{x:.2f}{suffix}"


def evaluate_targets(results, memory, resume) -> dict:
    """The targets as measured ratios, end to end (the main figure) and after start-up."""
    by = {r["name"]: r for r in results}
    plain = by["plain loop"]
    ours = [r for r in results if r["engine"] == "predict.py"]
    best = max(ours, key=lambda r: r["rows_per_s"])
    best_per_text = max((r for r in ours if r["per_text"]), key=lambda r: r["rows_per_s"])

    def both(r, ref):
        return ratio(r["rows_per_s"], ref["rows_per_s"]), ratio(r["tool_rows_per_s"], ref["tool_rows_per_s"])

    speed, speed_after = both(best, plain)
    speed_pt, speed_pt_after = both(best_per_text, plain)
    mem = {}
    for m in memory:
        mem.setdefault(m["name"], {})[m["rows"]] = m["peak_rss_mb"]
    growth = {name: (v[max(v)] - v[min(v)]) / v[min(v)] for name, v in mem.items() if len(v) == 2}
    t = {
        "speedup": {"target": "best predict.py configuration >= 1.5x the plain loop's rows/s",
                    "measured": f"{best['name']}: {fmt_ratio(speed)} end to end ({fmt_ratio(speed_after)} after "
                                f"start-up); best deterministic per text, {best_per_text['name']}: "
                                f"{fmt_ratio(speed_pt)} ({fmt_ratio(speed_pt_after)})",
                    "met": bool(speed and speed >= 1.5), "ratio": speed, "ratio_after_startup": speed_after,
                    "per_text_ratio": speed_pt, "per_text_ratio_after_startup": speed_pt_after},
        "memory": {"target": "predict.py peak memory grows < 10% from the small file to the large one",
                   "measured": ", ".join(f"{n}: {g * 100:+.1f}%" for n, g in growth.items()),
                   "met": bool(growth) and max(growth.values()) < 0.10, "growth": growth},
        "resume": {"target": "kill + resume gives a byte-identical output", "measured": str(resume["identical"]),
                   "met": resume["identical"] and not resume["output_existed_before_completion"]},
    }
    if "Spark local" in by:
        r, r_after = both(by["Spark local"], best_per_text)
        t["spark"] = {"target": "Spark local >= 70% of predict.py's rows/s (its best deterministic configuration)",
                      "measured": f"{fmt_ratio(r and r * 100, '%')} of {best_per_text['name']} end to end "
                                  f"({fmt_ratio(r_after and r_after * 100, '%')} after start-up)",
                      "met": bool(r and r >= 0.7), "ratio": r, "ratio_after_startup": r_after}
    return t


def main(argv=None):
    args = parse_args(argv)
    if args.plain_loop:
        return plain_loop(args.run_name, *args.plain_loop)
    started = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="batch-scoring-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if args.smoke and not args.run_name:
        args.run_name, env = smoke_run(work)
    if not args.run_name:
        raise PipelineError("pass --run-name (a quantized run in models/), or --smoke")
    models_dir = Path(env.get("QAT_MODELS_DIR", MODELS_DIR))
    rdir = models_dir / args.run_name
    if not (rdir / "model_qat_int8_dynamic.onnx").is_file():
        raise PipelineError(f"{rdir} has no INT8 model: run export_to_onnx.py and quantize_onnx_dynamic.py first")
    out_dir = Path(args.out_dir) if args.out_dir else (work if args.smoke else DEFAULT_REPORT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    from scoring import model_sha256

    texts = smsa_texts()
    big = write_input(texts, args.rows, work / f"texts-{args.rows}.csv")
    small = write_input(texts, args.small_rows, work / f"texts-{args.small_rows}.csv")
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke, "cpu": cpu_info(),
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "note": args.note,
            "run_name": args.run_name, "model_sha256": model_sha256(rdir), "rows": args.rows,
            "small_rows": args.small_rows, "chunk_rows": args.chunk_rows, "distinct_texts": len(set(texts)),
            "max_length": json.loads((rdir / "run_info.json").read_text())["max_length"]}
    chunk = ["--chunk-rows", args.chunk_rows]
    configs = [  # name, engine, deterministic per text, extra predict.py arguments, peak memory on both sizes
        ("predict.py, 1 worker", "predict.py", True, chunk + ["--workers", 1], True),
        ("predict.py, 2 workers", "predict.py", True, chunk + ["--workers", 2], True),
        (f"predict.py, 2 workers, --batch-size {args.batch_size}", "predict.py", False,
         chunk + ["--workers", 2, "--batch-size", args.batch_size], False),
    ]
    if not args.skip_spark:
        configs.append(("Spark local", "spark", True, ["--engine", "spark", "--spark-master", "local[*]"], False))
    results, memory = [], []

    def measure(name, engine, per_text, cmd, rows, shown):
        print(f"{name}, {rows:,} rows ...", flush=True)
        r = run_measured(cmd, env)
        r.update(name=name, engine=engine, per_text=per_text, rows=rows, rows_per_s=rows / r["wall_s"], cmd=shown)
        print(f"  {r['wall_s']:.1f} s, {r['rows_per_s']:.1f} rows/s end to end, {r['tool_rows_per_s']} rows/s after "
              f"start-up, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        return r

    loop_cmd = [sys.executable, str(Path(__file__).resolve()), "--run-name", args.run_name, "--plain-loop"]
    loop_rows, loop_src = (args.small_rows, small) if args.plain_loop_small else (args.rows, big)
    results.append(measure("plain loop", "python", True, loop_cmd + [str(loop_src), str(work / "plain.csv")],
                           loop_rows, "Predictor(run, per_text=True).predict per 1000 texts"))
    for name, engine, per_text, extra, both_sizes in configs:
        for rows, src in ((args.small_rows, small), (args.rows, big))[0 if both_sizes else 1:]:
            out = work / f"out-{len(results)}-{rows}.csv"
            shown = "predict.py " + " ".join(map(str, extra))
            r = measure(name, engine, per_text, predict_cmd(args.run_name, src, out, *extra), rows, shown)
            memory.append({"name": name, "rows": rows, "peak_rss_mb": r["peak_rss_mb"]})
        results.append(r)
    resume = kill_and_resume(args.run_name, small, work, env, args.chunk_rows, args.small_rows)
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["total_s"] = time.perf_counter() - started
    targets = evaluate_targets(results, memory, resume)
    text = render_report(meta, results, memory, resume, targets)
    save_report(out_dir, "batch_scoring", {"meta": meta, "results": results, "memory": memory, "resume": resume,
                                           "targets": targets}, text)
    print(text)


if __name__ == "__main__":
    main_guard(main)
