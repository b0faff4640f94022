"""Bounded load on serve.py over loopback: requests/s, p50/p95/p99 latency and errors for 1, 8 and 32 clients,
against 1 and 2 worker processes.

    python benchmarks/serve_load.py --run-name e5-small-qat-int8-smsa [--requests 200 --duration-limit 60 --workers 1,2]
    python benchmarks/serve_load.py --run-name tiny --smoke --out-dir /tmp/x     # a few requests (the tests)

For each --workers count, starts `serve.py --run-name NAME --workers W` itself on a free 127.0.0.1 port (never
another host; default threads: the cores divided by W), waits until /metrics counts W workers, then sends at most
--requests requests per concurrency level and stops a level after --duration-limit seconds, each client sending
its next request when the previous one is answered. Texts come from the run's test split (or built-in sentences).
Each level also records how many /predict requests the server itself counted as answered with 200 (its /metrics),
a cross-check of the client's count. Writes benchmarks/reports/serve_load.md and serve_load.json. The clients run on
the same machine as the server and share its cores: the numbers are a lower bound of what the service does with the
CPU to itself.
"""

import argparse
import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import MODELS_DIR, RUN_INFO_FILE, PipelineError, main_guard, save_report  # noqa: E402
from common import cpu_info, isa_text  # noqa: E402

FALLBACK_TEXTS = [
    "makanan nya enak sekali dan pelayanan nya ramah",
    "tempat nya kotor , tidak akan datang lagi",
    "harga nya biasa saja , rasa nya juga biasa",
    "saya sangat kecewa dengan layanan pelanggan mereka yang lambat",
    "pemandangan nya indah , cocok untuk liburan keluarga",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_texts(run_name: str, data_dir: str | None) -> tuple[list[str], str]:
    import pandas as pd

    info_path = MODELS_DIR / run_name / RUN_INFO_FILE
    if data_dir is None and info_path.is_file():
        data_dir = json.loads(info_path.read_text()).get("data_dir")
    path = Path(data_dir) / "test.csv" if data_dir else None
    if path is not None and not path.is_absolute() and not path.is_file():
        path = ROOT / path
    if path is not None and path.is_file():
        col = json.loads(info_path.read_text()).get("text_column", "text") if info_path.is_file() else "text"
        return pd.read_csv(path, dtype=str, keep_default_na=False)[col].tolist(), str(path)
    return FALLBACK_TEXTS, "built-in sentences"


def start_server(run_name: str, port: int, log, *extra, env=None, timeout: float = 120):
    """serve.py in a subprocess on 127.0.0.1:port, output to log; returns (process, base url) once /health answers."""
    import httpx

    cmd = [sys.executable, str(ROOT / "serve.py"), "--run-name", run_name, "--host", "127.0.0.1", "--port", str(port),
           *map(str, extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise PipelineError(f"serve.py exited with {proc.returncode}: {log.read().strip()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise PipelineError(f"serve.py did not answer /health within {timeout:.0f} s")


def scrape(url: str) -> dict:
    """The server's /metrics as {(name, sorted labels): value}, parsed by prometheus_client."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def served_ok(url: str) -> float:
    """/predict requests the server has answered with 200, summed over its workers."""
    return scrape(url).get(("serve_requests_total", (("endpoint", "/predict"), ("status", "200"))), 0.0)


def wait_for_workers(url: str, workers: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while scrape(url).get(("serve_workers", ()), 0) < workers:
        if time.monotonic() > deadline:
            raise PipelineError(f"serve.py did not report {workers} workers in /metrics within {timeout:.0f} s")
        time.sleep(0.5)


def stop_server(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def percentile(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if values else None


async def run_level(url: str, texts: list[str], concurrency: int, n_requests: int, duration_limit: float,
                    per_request: int) -> dict:
    import httpx

    latencies, errors, error_samples = [], 0, []
    next_i = 0
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency,
                                                     max_keepalive_connections=concurrency)) as client:
        t_start = time.perf_counter()
        deadline = t_start + duration_limit

        async def client_loop():
            nonlocal next_i, errors
            while next_i < n_requests and time.perf_counter() < deadline:
                i = next_i
                next_i += 1
                batch = [texts[(i * per_request + k) % len(texts)] for k in range(per_request)]
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", json={"texts": batch})
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == len(batch)
                    if not ok and len(error_samples) < 5:
                        error_samples.append(f"{r.status_code}: {r.text[:200]}")
                except Exception as e:  # a refused or dropped connection is an error, not a crash
                    ok = False
                    if len(error_samples) < 5:
                        error_samples.append(f"{type(e).__name__}: {e}"[:200])
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    sent = len(latencies) + errors
    return {
        "concurrency": concurrency, "requests_sent": sent, "ok": len(latencies), "errors": errors,
        "error_samples": error_samples, "texts_per_request": per_request, "seconds": round(elapsed, 3),
        "stopped_by_time_limit": sent < n_requests,
        "requests_per_second": len(latencies) / elapsed if elapsed else 0.0,
        "texts_per_second": len(latencies) * per_request / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99), "max": max(latencies) if latencies else None},
    }


def render_report(report: dict) -> str:
    cpu = report["cpu"]
    flags = isa_text(cpu)
    lines = [
        f"# serve.py load: {report['run']}",
        "",
        f"- date: {report['date']}",
        f"- CPU: {cpu['model']} ({report['cpu_count']} logical cores); ISA flags: {flags}; load average (1, 5, "
        f"15 min) when the benchmark started: {', '.join(map(str, report['load_average_at_start']))}",
        f"- server: `{report['server_command']}` (batch mode {report['batch_mode']}, model sha256 "
        f"{report['model_sha256'][:16]}...); threads per worker: "
        + ", ".join(f"{w} worker(s): {t}" for w, t in report["threads_per_worker"].items()),
        f"- load: at most {report['requests_per_level']} requests and {report['duration_limit_s']} s per level, "
        f"{report['texts_per_request']} text(s) per request, texts from {report['texts_source']}; every client sends "
        f"its next request when the previous one is answered; clients on the same machine (loopback), sharing its "
        f"cores with the server",
        "",
        "| workers | clients | requests ok | errors | req/s | texts/s | p50 ms | p95 ms | p99 ms | max ms | "
        "time limit hit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for lvl in report["levels"]:
        lat = lvl["latency_ms"]
        fmt = (lambda v: f"{v:.1f}" if v is not None else "-")
        lines.append(f"| {lvl['workers']} | {lvl['concurrency']} | {lvl['ok']} | {lvl['errors']} | "
                     f"{lvl['requests_per_second']:.1f} | "
                     f"{lvl['texts_per_second']:.1f} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | {fmt(lat['p99'])} | "
                     f"{fmt(lat['max'])} | {'yes' if lvl['stopped_by_time_limit'] else 'no'} |")
    total_errors = sum(lvl["errors"] for lvl in report["levels"])
    mismatch = [lvl for lvl in report["levels"] if lvl["server_counted_ok"] != lvl["ok"]]
    lines += ["", f"Total errors: {total_errors}. Requests answered with 200 as counted by the server's /metrics "
              + ("equal the clients' count at every level." if not mismatch else
                 f"differ from the clients' count at {len(mismatch)} level(s): see server_counted_ok in the JSON.")]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines)


def run_server_levels(args, texts: list[str], levels: list[int], workers: int) -> tuple[dict, list[dict], bool]:
    """One server with `workers` processes, every concurrency level against it: (metadata, levels, alive after)."""
    import httpx

    with tempfile.TemporaryFile("w+") as log:
        extra = ["--batch-mode", args.batch_mode, "--workers", workers]
        extra += ["--threads", args.threads] if args.threads else []
        proc, url = start_server(args.run_name, free_port(), log, *extra)
        try:
            wait_for_workers(url, workers)
            meta = httpx.get(f"{url}/metadata", timeout=10).json()
            for i in range(5 * workers):  # warm-up (each new connection may reach another worker)
                httpx.post(f"{url}/predict", json={"texts": [texts[i % len(texts)]]}, timeout=60)
            results = []
            for c in levels:
                before = served_ok(url)
                lvl = asyncio.run(run_level(url, texts, c, args.requests, args.duration_limit, args.texts_per_request))
                lvl.update(workers=workers, server_counted_ok=int(served_ok(url) - before))
                print(f"{workers} worker(s), {c:>3} clients: {lvl['ok']} ok ({lvl['server_counted_ok']} counted by the "
                      f"server), {lvl['errors']} errors, {lvl['requests_per_second']:.1f} req/s, p50/p95/p99 "
                      f"{lvl['latency_ms']['p50'] or 0:.1f}/{lvl['latency_ms']['p95'] or 0:.1f}/"
                      f"{lvl['latency_ms']['p99'] or 0:.1f} ms", flush=True)
                results.append(lvl)
            alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
        finally:
            stop_server(proc)
    return meta, results, alive


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True)
    p.add_argument("--requests", type=int, default=200, help="most requests per concurrency level")
    p.add_argument("--duration-limit", type=float, default=60.0, help="most seconds per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--workers", default="1,2", help="comma-separated serve.py --workers counts, one server each")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--batch-mode", choices=("per-text", "shared"), default="per-text")
    p.add_argument("--threads", type=int, default=None,
                   help="serve.py --threads, per worker (default: its own, the cores divided by the workers)")
    p.add_argument("--data-dir", default=None, help="texts from DATA_DIR/test.csv (default: the run's)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "reports"))
    p.add_argument("--report-name", default="serve_load", help="report file names, without .md/.json")
    p.add_argument("--note", default="", help="a line added to the report")
    p.add_argument("--smoke", action="store_true", help="a few requests per level (for the tests)")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.duration_limit = min(args.requests, 12), min(args.duration_limit, 20)
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise PipelineError("--concurrency and --workers are comma-separated whole numbers, e.g. 1,8,32")
    if (not levels or not worker_counts or min(levels + worker_counts) < 1 or args.requests < 1
            or args.duration_limit <= 0 or args.texts_per_request < 1):
        raise PipelineError("--concurrency, --workers, --requests, --duration-limit and --texts-per-request must be "
                            "positive")
    if not (MODELS_DIR / args.run_name).is_dir():
        raise PipelineError(f"no run {args.run_name!r} in {MODELS_DIR}")
    texts, source = load_texts(args.run_name, args.data_dir)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    results, threads, alive = [], {}, True
    for workers in worker_counts:
        meta, lvls, ok = run_server_levels(args, texts, levels, workers)
        threads[workers] = meta["service"]["threads"]
        results += lvls
        alive = alive and ok
    report = {
        "run": args.run_name, "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_info(),
        "cpu_count": os.cpu_count(), "load_average_at_start": load_at_start, "server_command": f"python serve.py --run-name {args.run_name} --batch-mode "
        f"{args.batch_mode} --workers W" + (f" --threads {args.threads}" if args.threads else ""),
        "batch_mode": args.batch_mode, "threads_per_worker": threads,
        "model_sha256": meta["model_sha256"], "requests_per_level": args.requests,
        "duration_limit_s": args.duration_limit, "texts_per_request": args.texts_per_request, "texts_source": source,
        "smoke": args.smoke, "server_alive_after": alive, "note": args.note, "levels": results,
    }
    text = render_report(report)
    save_report(out_dir, args.report_name, report, text)
    print(text)
    print(f"wrote {out_dir / args.report_name}.md and .json")


if __name__ == "__main__":
    main_guard(main)
