"""A REST service for a run's INT8 ONNX model (FastAPI, run by uvicorn).

    python serve.py --run-name e5-small-qat-int8-smsa [--host 127.0.0.1 --port 8000 --workers 1]

    POST /predict   {"texts": ["...", ...]}  ->  {"predictions": [{"label", "score", "probabilities": {label: p}}]}
    GET  /health    liveness (and the answering worker's pid)
    GET  /metadata  labels, model file sha256, quantization settings, the test metrics of the batch mode served,
                    the service's limits
    GET  /metrics   Prometheus metrics (prometheus_client): serve_requests_total{endpoint,status},
                    serve_request_duration_seconds{endpoint}, serve_queue_depth, serve_texts_scored_total,
                    serve_workers; summed over all worker processes

Binds to 127.0.0.1 unless --host says otherwise. Bad input gets a 4xx with a one-line "detail" message and the
service keeps answering: body not JSON or not {"texts": [...]} (400/422), empty list, non-string items, empty or
whitespace-only texts, texts that are not valid Unicode (a lone surrogate such as "\\ud800"), more than --max-batch
texts, a text over --max-chars characters (422), a body over --max-body-bytes (413, after reading and discarding a
body of up to 16 MiB so that any client gets the answer); more than --max-pending requests waiting, or a request
unanswered after --request-timeout s, gets 503. A 500 (a failed inference) is logged with its traceback; a failed
job of several gathered requests is retried one request at a time, so a bad request fails only itself. Inference runs in a worker thread, one forward job at a time (the model already uses --threads cores),
so the event loop keeps answering; requests that arrive together are gathered into one job (micro-batching).

--workers N runs N processes (uvicorn workers), each with its own copy of the model and --threads ONNX Runtime
threads (default: the machine's cores divided by N), sharing the port; limits such as --max-pending hold per
worker. Prometheus' multiprocess mode (a fresh PROMETHEUS_MULTIPROC_DIR per start, removed at exit) makes /metrics
report the sum over all workers, whichever worker answers the scrape.

--batch-mode per-text (default): each text is its own ONNX Runtime batch, without padding, so a text's result
depends on that text only. ONNX Runtime's dynamic quantization scales activations per tensor, so in
--batch-mode shared (texts of concurrent requests batched together by length, --batch-size per batch) a
text's label can depend on what else shares its batch; benchmarks/reports/batch_dependence.md has the rate.
"""


import argparse
import asyncio
import glob
import importlib.util
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from common import INT8_FILE, MODELS_DIR, RESULTS_DIR, PipelineError, main_guard
from scoring import MAX_CHARS, is_unicode

METRIC_KEYS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "n_samples", "batch_size", "data")
# The evaluation that matches each batch mode (eval_onnx_int8_dynamic.py [--per-text]).
METRICS_FILES = {"per-text": "metrics_onnx_int8_dynamic_per_text.json", "shared": "metrics_onnx_int8_dynamic.json"}
EVAL_FLAGS = {"per-text": " --per-text", "shared": ""}
CONFIG_ENV = "QAT_SERVE_CONFIG"  # the settings main() hands to the worker processes (app_factory)
ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics")  # metric labels: any other path counts as "other"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A body over --max-body-bytes is read and discarded up to this size before the 413: a client still sending when the
# server answered and closed would get "broken pipe" instead of the answer. Larger bodies are answered at once.
DRAIN_MAX_BYTES = 16 << 20
# uvicorn configures this logger in every worker process (its level is --log-level; errors always show)
log = logging.getLogger("uvicorn.error")


def default_threads(workers: int) -> int:
    """ONNX Runtime threads per worker: the machine's cores shared out among the workers."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclass
class Settings:
    batch_mode: str = "per-text"  # or "shared"
    batch_size: int = 32  # rows per ONNX Runtime batch in shared mode
    max_batch: int = 64  # texts per request
    max_chars: int = MAX_CHARS  # characters per text (predict.py's default too)
    max_body_bytes: int = 1_000_000
    max_pending: int = 256  # requests waiting or running before 503
    batch_wait_ms: float = 2.0  # shared mode: how long to wait for more requests to join a job
    max_job_texts: int = 256  # texts gathered into one job
    request_timeout_s: float = 120.0  # a request not answered by then gets 503 (and is dropped if not started)
    workers: int = 1  # processes
    threads: int = default_threads(1)  # ONNX Runtime threads per worker


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail



def served_metrics(results_dir: Path | None, predictor, settings: Settings) -> dict:
    """The test metrics measured the way the service batches (per text, or in batches) on the model it serves, or
    why there are none: metrics of another model file (re-exported or re-quantized since) or another max_length are
    not shown."""
    run = predictor.run_dir.name
    name = METRICS_FILES[settings.batch_mode]
    out = {"test_metrics": None, "test_metrics_file": name,
           "test_metrics_mode": "each text alone (batch of 1, no padding)" if settings.batch_mode == "per-text"
           else "batches sorted by length, padded per batch"}
    path = results_dir / name if results_dir else None
    rerun = f"run `python eval_onnx_int8_dynamic.py --run-name {run}{EVAL_FLAGS[settings.batch_mode]}`"
    if path is None or not path.is_file():
        out["test_metrics_note"] = f"no {name} for --batch-mode {settings.batch_mode}: {rerun}"
        return out
    m = json.loads(path.read_text())
    model_file = predictor.model_path.name
    if (m.get("lineage") or {}).get(model_file) != predictor.lineage[model_file]:
        out["test_metrics_note"] = f"{name} was measured on another {model_file} than the one served: {rerun}"
        return out
    if m.get("max_length") != predictor.max_length:
        out["test_metrics_note"] = (f"{name} was measured with max_length {m.get('max_length')}, the service "
                                    f"truncates at {predictor.max_length}: {rerun}")
        return out
    out["test_metrics"] = {k: m[k] for k in METRIC_KEYS if k in m}
    if settings.batch_mode == "shared" and m.get("batch_size") != settings.batch_size:
        out["test_metrics_note"] = (f"measured with batches of {m.get('batch_size')}; the service batches up to "
                                    f"{settings.batch_size} texts of concurrent requests")
    return out


def run_metadata(predictor, results_dir: Path | None, settings: Settings) -> dict:
    run = predictor.run
    quant = dict(run.quant)
    if isinstance(quant.get("quantized_linears"), list):
        quant["quantized_linears"] = len(quant["quantized_linears"])  # a count, not the names
    return {
        "run": run.name,
        "labels": predictor.labels,
        "model_file": predictor.model_path.name,
        "model_sha256": predictor.lineage[predictor.model_path.name],
        "model_size_bytes": predictor.model_path.stat().st_size,
        "max_length_tokens": predictor.max_length,
        "input_names": predictor.input_names,
        "quantization": quant,
        "training": {k: run.info[k] for k in ("model", "recipe", "epochs", "n_train", "qat", "target_cpu") if k in run.info},
        **served_metrics(results_dir, predictor, settings),
    }


class ServiceMetrics:
    """The Prometheus metrics of one worker process. With PROMETHEUS_MULTIPROC_DIR set (several workers) the values
    live in files there and /metrics sums the files of every worker (prometheus_client's multiprocess mode)."""

    def __init__(self):
        import prometheus_client as pc

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # Multiprocess mode exports every metric created in the process; otherwise a registry of the app's own.
        self.registry = None if self.multiprocess else pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("serve_requests", "HTTP requests answered, by endpoint and status code",
                                   ["endpoint", "status"], registry=r)
        self.latency = pc.Histogram("serve_request_duration_seconds", "Time from request to response, by endpoint",
                                    ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = pc.Gauge("serve_queue_depth", "Requests waiting for or in inference",
                                    multiprocess_mode="livesum", registry=r)
        self.texts_scored = pc.Counter("serve_texts_scored", "Texts answered with a prediction", registry=r)
        self.workers = pc.Gauge("serve_workers", "Worker processes serving", multiprocess_mode="livesum", registry=r)

    def worker_started(self):
        if self.multiprocess:
            forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        self.workers.set(1)

    def worker_stopped(self):
        if self.multiprocess:  # a worker stopped by uvicorn (clean exit) drops its live gauges itself
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges (queue depth, workers) of worker processes that died without cleaning up (uvicorn
    restarts a dead worker; its replacement calls this), so they stop adding to the sums. Counters are kept."""
    from prometheus_client import multiprocess

    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(Path(f).stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:  # alive, another user's
            pass


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by endpoint and status code and times it."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


class Batcher:
    """Gathers the texts of requests that wait together into one inference job, run in a single worker thread."""

    def __init__(self, predictor, settings: Settings, queue_depth=None):
        self.predictor, self.settings = predictor, settings
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.queue_depth = queue_depth  # a Prometheus gauge that follows self.pending, if given
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, texts: list[str]) -> list[dict]:
        if self.pending >= self.settings.max_pending:
            raise BadRequest(503, f"server busy: {self.pending} requests already waiting (--max-pending "
                                  f"{self.settings.max_pending}); retry later")
        fut = asyncio.get_running_loop().create_future()
        self._count_pending(+1)
        try:
            self.queue.put_nowait((texts, fut))
            try:
                return await asyncio.wait_for(fut, self.settings.request_timeout_s)
            except asyncio.TimeoutError:
                raise BadRequest(503, f"not answered within {self.settings.request_timeout_s:g} s "
                                      f"(--request-timeout): the server is overloaded; retry later")
        finally:
            self._count_pending(-1)

    def _count_pending(self, delta: int):
        self.pending += delta
        if self.queue_depth is not None:
            self.queue_depth.inc(delta)

    async def _run(self):
        loop = asyncio.get_running_loop()
        wait_s = self.settings.batch_wait_ms / 1000 if self.settings.batch_mode == "shared" else 0.0
        while True:
            items = [await self.queue.get()]
            if wait_s:
                await asyncio.sleep(wait_s)
            n = len(items[0][0])
            while n < self.settings.max_job_texts and not self.queue.empty():
                items.append(self.queue.get_nowait())
                n += len(items[-1][0])
            items = [(t, f) for t, f in items if not f.done()]  # clients that went away
            if not items:
                continue
            try:
                await self._answer(loop, items)
            except Exception as e:  # a failed job fails its requests, never the service
                if len(items) == 1:
                    self._fail(items[0][1], e)
                    continue
                for item in items:  # several requests gathered: each alone, so only the bad one fails
                    try:
                        await self._answer(loop, [item])
                    except Exception as e1:
                        self._fail(item[1], e1)

    @staticmethod
    def _fail(fut, error: Exception):
        if not fut.done():
            fut.set_exception(error)

    async def _answer(self, loop, items):
        """One inference job for the texts of the items; each request's future gets its results."""
        texts = [t for ts, _ in items for t in ts]
        results = await loop.run_in_executor(self.executor, self.predictor.predict, texts)
        start = 0
        for ts, f in items:
            if not f.done():
                f.set_result(results[start:start + len(ts)])
            start += len(ts)


def validate(payload, s: Settings) -> list[str]:
    if not isinstance(payload, dict) or "texts" not in payload:
        raise BadRequest(422, 'body must be a JSON object {"texts": ["...", ...]}')
    extra = sorted(set(payload) - {"texts"})
    if extra:
        raise BadRequest(422, f"unknown field(s) {', '.join(map(repr, extra))}: the body is {{\"texts\": [...]}}")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not texts:
        raise BadRequest(422, '"texts" is empty: send at least one text')
    if len(texts) > s.max_batch:
        raise BadRequest(422, f'"texts" has {len(texts)} items, more than --max-batch {s.max_batch}: split the request')
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            kind = "null" if t is None else type(t).__name__
            raise BadRequest(422, f'"texts"[{i}] is {kind}: every item must be a string')
        if not t.strip():
            raise BadRequest(422, f'"texts"[{i}] is empty or only whitespace: every text needs some content')
        if len(t) > s.max_chars:
            raise BadRequest(422, f'"texts"[{i}] has {len(t)} characters, more than --max-chars {s.max_chars}')
        if not is_unicode(t):
            raise BadRequest(422, f'"texts"[{i}] is not valid Unicode (a lone surrogate such as \\ud800): send '
                                  f'text that encodes as UTF-8')
    return texts


def create_app(predictor, settings: Settings, metadata: dict, metrics: ServiceMetrics | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST

    state = {}
    metrics = metrics or ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(predictor, settings, queue_depth=metrics.queue_depth)
        batcher.start()
        state["batcher"] = batcher
        state["started"] = time.time()
        metrics.worker_started()
        yield
        metrics.worker_stopped()
        await batcher.stop()

    app = FastAPI(title=f"{metadata['run']} classifier", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestMetrics, metrics=metrics)
    meta = {**metadata, "service": asdict(settings)}

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def discard_body(stream, received: int) -> None:
        """Read the rest of a refused body from its stream (one per request: Starlette refuses a second), up to
        DRAIN_MAX_BYTES in all, so the client is not cut off while still sending (it would see a broken pipe, not
        the 413)."""
        async for chunk in stream:
            received += len(chunk)
            if received > DRAIN_MAX_BYTES:
                return

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 once it is over the limit (by Content-Length, or as it streams in)."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        try:
            declared_n = int(declared) if declared is not None else None
        except ValueError:
            raise BadRequest(400, "invalid Content-Length header")
        stream = request.stream()
        if declared_n is not None and declared_n > limit:
            if declared_n <= DRAIN_MAX_BYTES:
                await discard_body(stream, 0)
            raise BadRequest(413, f"body of {declared_n} bytes is over the limit of {limit} bytes (--max-body-bytes)")
        body = bytearray()
        async for chunk in stream:
            body += chunk
            if len(body) > limit:
                await discard_body(stream, len(body))
                raise BadRequest(413, f"body is over the limit of {limit} bytes (--max-body-bytes)")
        return bytes(body)

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_body(request)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(400, f"body is not valid JSON ({str(e).splitlines()[0][:100]})")
        texts = validate(payload, settings)
        try:
            predictions = await state["batcher"].submit(texts)
        except BadRequest:
            raise
        except Exception as e:
            log.error("POST /predict: inference failed for %d text(s)", len(texts), exc_info=e)
            detail = " ".join(f"inference failed: {type(e).__name__}: {e}".split())[:300]
            return JSONResponse({"detail": detail}, status_code=500)
        metrics.texts_scored.inc(len(predictions))
        return {"predictions": predictions}

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "run": metadata["run"], "pending": b.pending if b else 0, "worker_pid": os.getpid(),
                "uptime_s": round(time.time() - state.get("started", time.time()), 1)}

    @app.get("/metadata")
    async def get_metadata():
        return meta

    @app.get("/metrics")
    def get_metrics():  # sync: FastAPI runs it in a thread, off the event loop (multiprocess mode reads files)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def load_service(cfg: dict) -> tuple:
    """The predictor (whose construction is the start-up check), settings and metadata that cfg describes."""
    from predictor import Predictor

    settings = Settings(**cfg["settings"])
    # The start-up check: the model's output width equals the run's labels (PipelineError otherwise).
    predictor = Predictor(cfg["run_dir"], threads=settings.threads, model_file=cfg["model_file"],
                          batch_size=settings.batch_size, per_text=settings.batch_mode == "per-text")
    return predictor, settings, run_metadata(predictor, Path(cfg["results_dir"]), settings)


def app_factory():
    """The app of one worker process, for `uvicorn.run("serve:app_factory", factory=True, workers=N)`: main() puts
    its settings in the environment variable QAT_SERVE_CONFIG."""
    if CONFIG_ENV not in os.environ:
        raise PipelineError(f"serve:app_factory reads its settings from {CONFIG_ENV}: start the service with "
                            f"`python serve.py --run-name RUN --workers N`")
    return create_app(*load_service(json.loads(os.environ[CONFIG_ENV])))


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True, help=f"a run folder in {MODELS_DIR} (QAT_MODELS_DIR moves it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback exposes the service")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="worker processes, each with its own copy of the model, sharing the port; /metrics sums "
                        "them all")
    p.add_argument("--model-file", default=INT8_FILE, help="ONNX file in the run folder")
    p.add_argument("--batch-mode", choices=("per-text", "shared"), default=d.batch_mode,
                   help="per-text: each text alone, result depends on the text only; shared: texts of concurrent "
                        "requests batched together (more throughput where batching pays; a label can depend on the "
                        "batch)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per ONNX Runtime batch (shared mode)")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="shared mode: wait this long for concurrent requests to join a job")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most texts in one request")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="most characters in one text")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body")
    p.add_argument("--max-pending", type=int, default=d.max_pending,
                   help="requests waiting or in inference before new ones get 503")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                   help="seconds before a waiting request gets 503")
    p.add_argument("--threads", type=int, default=None,
                   help=f"ONNX Runtime threads of each worker (default: the {os.cpu_count()} cores divided by "
                        f"--workers, at least 1)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    return p


def check_port_free(host: str, port: int) -> None:
    """Bind the address once before loading the model: a busy port is one line, before anything says 'serving'."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PipelineError(f"--host {host}: {e.strerror}: pass an address of this machine (127.0.0.1, 0.0.0.0)")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            raise PipelineError(f"cannot listen on {host}:{port} ({e.strerror}): another process uses the port? "
                                f"Stop it or pass another --port")


def main():
    args = build_parser().parse_args()
    # prometheus_client picks its mode when first imported: in memory for one process, files for several (below).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.threads is None:
        args.threads = default_threads(args.workers)
    for name in ("max_batch", "max_chars", "max_body_bytes", "max_pending", "threads", "batch_size", "request_timeout",
                 "workers"):
        if getattr(args, name) < 1:
            raise PipelineError(f"--{name.replace('_', '-')} must be at least 1")
    rdir = MODELS_DIR / args.run_name
    if not rdir.is_dir():
        runs = sorted(p.name for p in MODELS_DIR.glob("*") if (p / INT8_FILE).is_file()) if MODELS_DIR.is_dir() else []
        raise PipelineError(f"no run {args.run_name!r} in {MODELS_DIR}"
                            + (f" (runs with an INT8 model: {', '.join(runs)})" if runs else ": run the pipeline first"))
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise PipelineError(f"serve.py needs {', '.join(missing)}: pip install -r requirements.txt")
    check_port_free(args.host, args.port)
    try:
        ip = ipaddress.ip_address(args.host)
        exposed = not ip.is_loopback
    except ValueError:
        exposed = args.host != "localhost"
    if exposed:
        print(f"warning: binding to {args.host}: the service is reachable from other machines, without "
              f"authentication or TLS", file=sys.stderr)
    if args.workers * args.threads > (os.cpu_count() or 1):
        print(f"warning: {args.workers} workers x {args.threads} threads is more than the {os.cpu_count()} cores: "
              f"the workers will slow each other down", file=sys.stderr)

    settings = Settings(batch_mode=args.batch_mode, batch_size=args.batch_size, max_batch=args.max_batch,
                        max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, max_pending=args.max_pending,
                        batch_wait_ms=args.batch_wait_ms, max_job_texts=max(args.max_batch, 4 * args.batch_size),
                        request_timeout_s=args.request_timeout, workers=args.workers, threads=args.threads)
    cfg = {"run_dir": str(rdir), "model_file": args.model_file, "results_dir": str(RESULTS_DIR / args.run_name),
           "settings": asdict(settings)}
    # Loaded here with one worker; with several, the start-up check only (each worker loads its own copy).
    predictor, settings, metadata = load_service(cfg)
    if metadata.get("test_metrics_note"):
        print(f"note: /metadata: {metadata['test_metrics_note']}", file=sys.stderr)
    uv = dict(host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5,
              limit_concurrency=args.max_pending + 64)
    where = (f"serving {rdir.name} ({', '.join(predictor.labels)}; {args.batch_mode} batches; {args.workers} "
             f"worker(s) x {args.threads} thread(s)) on http://{args.host}:{args.port}")
    import uvicorn

    if args.workers == 1:
        app = create_app(predictor, settings, metadata)
        print(where, flush=True)
        uvicorn.run(app, **uv)
        return
    del predictor
    metrics_dir = tempfile.mkdtemp(prefix="serve-metrics-")  # fresh: no counts of an earlier start
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client when a worker imports it
    os.environ[CONFIG_ENV] = json.dumps(cfg)
    print(f"{where}; metrics of all workers in {metrics_dir}", flush=True)
    try:
        # A worker busy loading its model may answer uvicorn's health ping late: give it a minute, not 5 s.
        uvicorn.run("serve:app_factory", factory=True, workers=args.workers, timeout_worker_healthcheck=60, **uv)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main_guard(main)
