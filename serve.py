"""A REST service for a run's INT8 ONNX model (FastAPI, run by uvicorn).

    python serve.py --run-name minilm-qat-int8-smsa [--host 127.0.0.1 --port 8000]

    POST /predict   {"texts": ["...", ...]}  ->  {"predictions": [{"label", "score", "probabilities": {label: p}}]}
    GET  /health    liveness
    GET  /metadata  labels, model file sha256, quantization settings, the run's test metrics, the service's limits

Binds to 127.0.0.1 unless --host says otherwise. Bad input gets a 4xx with a one-line "detail" message and the
service keeps answering: body not JSON or not {"texts": [...]} (400/422), empty list, non-string items, more than
--max-batch texts, a text over --max-chars characters (422), a body over --max-body-bytes (413); more than
--max-pending requests waiting, or a request unanswered after --request-timeout s, gets 503. Inference runs in
a worker thread, one forward job at a time (the model already uses --threads cores), so the event loop keeps
answering; requests that arrive together are gathered into one job (micro-batching).

--batch-mode per-text (default): each text is its own ONNX Runtime batch, without padding, so a text's result
depends on that text only. ONNX Runtime's dynamic quantization scales activations per tensor, so in
--batch-mode shared (texts of concurrent requests batched together by length, --batch-size per batch) a
text's label can depend on what else shares its batch; benchmarks/reports/batch_dependence.md has the rate.
"""


import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from common import INT8_FILE, MODELS_DIR, QUANT_CONFIG_FILE, RESULTS_DIR, RUN_INFO_FILE, PipelineError, main_guard

METRIC_KEYS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "n_samples", "batch_size", "data")


@dataclass
class Settings:
    batch_mode: str = "per-text"  # or "shared"
    batch_size: int = 32  # rows per ONNX Runtime batch in shared mode
    max_batch: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body_bytes: int = 1_000_000
    max_pending: int = 256  # requests waiting or running before 503
    batch_wait_ms: float = 2.0  # shared mode: how long to wait for more requests to join a job
    max_job_texts: int = 256  # texts gathered into one job
    request_timeout_s: float = 120.0  # a request not answered by then gets 503 (and is dropped if not started)
    threads: int = os.cpu_count() or 1


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_metadata(predictor, results_dir: Path | None) -> dict:
    rdir = predictor.run_dir
    quant = {}
    if (rdir / QUANT_CONFIG_FILE).is_file():
        quant = json.loads((rdir / QUANT_CONFIG_FILE).read_text())
        if isinstance(quant.get("quantized_linears"), list):
            quant["quantized_linears"] = len(quant["quantized_linears"])  # a count, not the names
    info = json.loads((rdir / RUN_INFO_FILE).read_text())
    metrics = None
    mpath = results_dir / "metrics_onnx_int8_dynamic.json" if results_dir else None
    if mpath and mpath.is_file():
        m = json.loads(mpath.read_text())
        metrics = {k: m[k] for k in METRIC_KEYS if k in m}
    return {
        "run": rdir.name,
        "labels": predictor.labels,
        "model_file": predictor.model_path.name,
        "model_sha256": sha256_file(predictor.model_path),
        "model_size_bytes": predictor.model_path.stat().st_size,
        "max_length_tokens": predictor.max_length,
        "input_names": predictor.input_names,
        "quantization": quant,
        "training": {k: info[k] for k in ("model", "epochs", "n_train", "qat") if k in info},
        "test_metrics": metrics,
    }


class Batcher:
    """Gathers the texts of requests that wait together into one inference job, run in a single worker thread."""

    def __init__(self, predictor, settings: Settings):
        self.predictor, self.settings = predictor, settings
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
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
        self.pending += 1
        try:
            self.queue.put_nowait((texts, fut))
            try:
                return await asyncio.wait_for(fut, self.settings.request_timeout_s)
            except asyncio.TimeoutError:
                raise BadRequest(503, f"not answered within {self.settings.request_timeout_s:g} s "
                                      f"(--request-timeout): the server is overloaded; retry later")
        finally:
            self.pending -= 1

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
            texts = [t for ts, _ in items for t in ts]
            try:
                results = await loop.run_in_executor(self.executor, self.predictor.predict, texts)
            except Exception as e:  # a failed job fails its requests, never the service
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
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
        if len(t) > s.max_chars:
            raise BadRequest(422, f'"texts"[{i}] has {len(t)} characters, more than --max-chars {s.max_chars}')
    return texts


def create_app(predictor, settings: Settings, metadata: dict):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    state = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(predictor, settings)
        batcher.start()
        state["batcher"] = batcher
        state["started"] = time.time()
        yield
        await batcher.stop()

    app = FastAPI(title=f"{metadata['run']} classifier", lifespan=lifespan, docs_url=None, redoc_url=None)
    meta = {**metadata, "service": asdict(settings)}

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 once it is over the limit (by Content-Length, or as it streams in)."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                raise BadRequest(400, "invalid Content-Length header")
            if declared_n > limit:
                raise BadRequest(413, f"body of {declared_n} bytes is over the limit of {limit} bytes (--max-body-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
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
            return JSONResponse({"detail": f"inference failed: {type(e).__name__}: {str(e)[:200]}"}, status_code=500)
        return {"predictions": predictions}

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "run": metadata["run"], "pending": b.pending if b else 0,
                "uptime_s": round(time.time() - state.get("started", time.time()), 1)}

    @app.get("/metadata")
    async def get_metadata():
        return meta

    return app


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-name", required=True, help=f"a run folder in {MODELS_DIR} (QAT_MODELS_DIR moves it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback exposes the service")
    p.add_argument("--port", type=int, default=8000)
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
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for ONNX Runtime")
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    return p


def main():
    args = build_parser().parse_args()
    for name in ("max_batch", "max_chars", "max_body_bytes", "max_pending", "threads", "batch_size", "request_timeout"):
        if getattr(args, name) < 1:
            raise PipelineError(f"--{name.replace('_', '-')} must be at least 1")
    rdir = MODELS_DIR / args.run_name
    if not rdir.is_dir():
        runs = sorted(p.name for p in MODELS_DIR.glob("*") if (p / INT8_FILE).is_file()) if MODELS_DIR.is_dir() else []
        raise PipelineError(f"no run {args.run_name!r} in {MODELS_DIR}"
                            + (f" (runs with an INT8 model: {', '.join(runs)})" if runs else ": run the pipeline first"))
    try:
        import uvicorn
    except ImportError:
        raise PipelineError("serve.py needs fastapi and uvicorn: pip install -r requirements.txt")
    try:
        ip = ipaddress.ip_address(args.host)
        exposed = not ip.is_loopback
    except ValueError:
        exposed = args.host != "localhost"
    if exposed:
        print(f"warning: binding to {args.host}: the service is reachable from other machines, without "
              f"authentication or TLS", file=sys.stderr)

    from predictor import Predictor

    settings = Settings(batch_mode=args.batch_mode, batch_size=args.batch_size, max_batch=args.max_batch,
                        max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, max_pending=args.max_pending,
                        batch_wait_ms=args.batch_wait_ms, max_job_texts=max(args.max_batch, 4 * args.batch_size),
                        request_timeout_s=args.request_timeout, threads=args.threads)
    # The start-up check: the model's output width equals the run's labels (PipelineError otherwise).
    predictor = Predictor(rdir, threads=args.threads, model_file=args.model_file, batch_size=args.batch_size,
                          per_text=args.batch_mode == "per-text")
    app = create_app(predictor, settings, run_metadata(predictor, RESULTS_DIR / args.run_name))
    print(f"serving {rdir.name} ({', '.join(predictor.labels)}; {args.batch_mode} batches) on "
          f"http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5,
                limit_concurrency=args.max_pending + 64)


if __name__ == "__main__":
    main_guard(main)
