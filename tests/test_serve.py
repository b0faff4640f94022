"""The REST service (serve.py) started for real with uvicorn on a free loopback port, talked to over HTTP; the
Python predictor (predictor.py) it shares with the scripts; the load benchmark's smoke mode."""

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ROOT, run_step, tiny_workspace, train_tiny

sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load  # noqa: E402
from serve_load import free_port, stop_server  # noqa: E402

from common import PipelineError  # noqa: E402

LIMITS = {"max_batch": 8, "max_chars": 300, "max_body_bytes": 20000}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny BERT through train (1 epoch) -> export -> quantize -> INT8 eval, outputs in a tmp folder."""
    w = tiny_workspace(tmp_path_factory.mktemp("serve"))
    train_tiny(w, "tiny", "--epochs", 1, "--max-train-samples", 300)
    for script in ("export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_onnx_int8_dynamic.py"):
        run_step(script, "--run-name", "tiny", env=w["env"])
    return {"tmp": w["tmp"], "env": w["env"], "run": w["tmp"] / "models" / "tiny",
            "results": w["tmp"] / "results" / "tiny", "texts": w["test_texts"]}


def start_server(env, run_name, *extra, timeout=90):
    """serve.py on a free loopback port (1 thread), its log beside the run's models; (process, base url)."""
    port = free_port()
    log = open(Path(env["QAT_MODELS_DIR"]).parent / f"serve-{port}.log", "w+")
    try:
        return serve_load.start_server(run_name, port, log, "--threads", 1, *extra, env=env, timeout=timeout)
    except PipelineError as e:
        raise AssertionError(str(e))


@pytest.fixture(scope="module")
def server(tiny_run):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    proc, url = start_server(tiny_run["env"], "tiny", *args)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield {"url": url, "client": client, "proc": proc}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def per_text_predictor(tiny_run):
    from predictor import Predictor

    return Predictor(tiny_run["run"], threads=1, per_text=True)


def assert_same_predictions(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["label"] == e["label"]
        assert g["score"] == pytest.approx(e["score"], abs=1e-6)
        assert g["probabilities"].keys() == e["probabilities"].keys()
        for label, p in e["probabilities"].items():
            assert g["probabilities"][label] == pytest.approx(p, abs=1e-6)


# ------------------------------------------------------------------ predictor.py


def test_predictor_matches_eval_script(tiny_run):
    """Batches of 32 sorted by length: the logits the INT8 eval wrote, and probabilities that sum to one."""
    from predictor import Predictor

    m = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    p = Predictor(tiny_run["run"], threads=m["threads"], batch_size=m["batch_size"])
    logits = p.predict_logits(tiny_run["texts"])
    assert np.abs(logits - np.array(m["logits"])).max() <= 1e-5
    out = p.predict(tiny_run["texts"][:5])
    assert [o["label"] for o in out] == m["predictions"][:5]
    for o in out:
        assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
        assert o["score"] == max(o["probabilities"].values())
    assert p.predict([]) == [] and p.predict_logits([]).shape == (0, 2)


def test_per_text_mode_is_independent_of_the_batch(per_text_predictor, tiny_run):
    texts = tiny_run["texts"][:12]
    together = per_text_predictor.predict_logits(texts)
    alone = np.concatenate([per_text_predictor.predict_logits([t]) for t in texts])
    assert np.array_equal(together, alone)


def test_predictor_refuses_a_model_not_matching_labels(tiny_run, tmp_path):
    from common import PipelineError
    from predictor import Predictor

    clone = tmp_path / "three"
    shutil.copytree(tiny_run["run"], clone)
    for name, key in (("config.json", "id2label"), ("run_info.json", "labels")):
        cfg = json.loads((clone / name).read_text())
        cfg[key] = {"0": "a", "1": "b", "2": "c"} if key == "id2label" else ["a", "b", "c"]
        (clone / name).write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="outputs 2 logits but the run has 3 labels"):
        Predictor(clone, threads=1)


# ------------------------------------------------------------------ serve.py over HTTP


def test_health_and_metadata(server, tiny_run):
    c = server["client"]
    assert c.get("/health").json()["status"] == "ok"
    meta = c.get("/metadata").json()
    model = tiny_run["run"] / "model_qat_int8_dynamic.onnx"
    assert meta["labels"] == ["negative", "positive"]
    assert meta["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    quant = json.loads((tiny_run["run"] / "quant_config.json").read_text())
    for key in ("weight_type", "per_channel", "reduce_range"):
        assert meta["quantization"][key] == quant[key]
    metrics = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    assert meta["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert meta["test_metrics"]["f1_macro"] == metrics["f1_macro"]
    assert meta["service"]["batch_mode"] == "per-text" and meta["service"]["max_batch"] == LIMITS["max_batch"]


def test_predictions_equal_the_predictor(server, tiny_run, per_text_predictor):
    texts = tiny_run["texts"][:LIMITS["max_batch"]]
    r = server["client"].post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert_same_predictions(r.json()["predictions"], per_text_predictor.predict(texts))
    # deterministic per text: the same text alone gets the same answer as in a request with others
    alone = server["client"].post("/predict", json={"texts": [texts[3]]}).json()["predictions"][0]
    assert alone == r.json()["predictions"][3]


LONG = "x" * (LIMITS["max_chars"] + 1)


@pytest.mark.parametrize("case, content, status, fragment", [
    ("empty list", {"texts": []}, 422, "is empty"),
    ("number item", {"texts": ["fine", 3]}, 422, '"texts"[1] is int'),
    ("null item", {"texts": [None]}, 422, '"texts"[0] is null'),
    ("nested item", {"texts": [["a"]]}, 422, '"texts"[0] is list'),
    ("texts not a list", {"texts": "just one"}, 422, "must be a list of strings"),
    ("no texts field", {"text": ["a"]}, 422, "body must be a JSON object"),
    ("not an object", ["a"], 422, "body must be a JSON object"),
    ("too many texts", {"texts": ["a"] * (LIMITS["max_batch"] + 1)}, 422, f"more than --max-batch {LIMITS['max_batch']}"),
    ("text too long", {"texts": ["ok", LONG]}, 422, f"more than --max-chars {LIMITS['max_chars']}"),
    ("body too large", {"texts": ["a" * 100] * 250}, 413, "over the limit of 20000 bytes"),
    ("invalid json", b'{"texts": [', 400, "not valid JSON"),
    ("not utf-8", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("deeply nested", b"[" * 15000, 400, "not valid JSON"),
])
def test_bad_input_gets_4xx_and_service_stays_up(server, case, content, status, fragment):
    c = server["client"]
    if isinstance(content, bytes):
        r = c.post("/predict", content=content, headers={"content-type": "application/json"})
    else:
        r = c.post("/predict", json=content)
    assert r.status_code == status, (case, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and fragment in detail, (case, detail)
    assert c.get("/health").status_code == 200
    assert c.post("/predict", json={"texts": ["masih jalan"]}).status_code == 200
    assert server["proc"].poll() is None


def test_streamed_body_over_the_limit_is_refused(server):
    """No Content-Length (chunked upload): the size is checked as the body streams in."""
    def chunks():
        yield b'{"texts": ["'
        for _ in range(30):
            yield b"a" * 1000
        yield b'"]}'

    r = server["client"].post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert server["client"].get("/health").status_code == 200


def test_burst_of_concurrent_requests(server, tiny_run, per_text_predictor):
    """200 requests, 16 in flight at a time: no error, and every answer equals the predictor's."""
    texts = tiny_run["texts"][:50]
    expected = {t: e for t, e in zip(texts, per_text_predictor.predict(texts))}
    requests = [texts[i % len(texts):i % len(texts) + 1 + i % 3] for i in range(200)]

    async def burst():
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=server["url"], timeout=60,
                                     limits=httpx.Limits(max_connections=16)) as client:
            async def one(batch):
                async with sem:
                    r = await client.post("/predict", json={"texts": batch})
                    return batch, r.status_code, r.json()

            return await asyncio.gather(*(one(b) for b in requests))

    results = asyncio.run(burst())
    errors = [(s, body) for _, s, body in results if s != 200]
    assert not errors, errors[:3]
    for batch, _, body in results:
        assert_same_predictions(body["predictions"], [expected[t] for t in batch])
    assert server["client"].get("/health").json()["pending"] == 0


def test_shared_batch_mode_equals_the_batched_predictor(tiny_run):
    """--batch-mode shared: one request's texts batched by length as predictor.py does with batch_size."""
    from predictor import Predictor

    proc, url = start_server(tiny_run["env"], "tiny", "--batch-mode", "shared", "--batch-size", 4)
    try:
        texts = tiny_run["texts"][:10]
        r = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert_same_predictions(r.json()["predictions"], Predictor(tiny_run["run"], threads=1, batch_size=4).predict(texts))
        assert httpx.get(f"{url}/metadata", timeout=10).json()["service"]["batch_mode"] == "shared"
    finally:
        stop_server(proc)


def test_start_up_refuses_a_model_not_matching_labels(tiny_run):
    env = tiny_run["env"]
    clone = Path(env["QAT_MODELS_DIR"]) / "three-labels"
    shutil.copytree(tiny_run["run"], clone, dirs_exist_ok=True)
    cfg = json.loads((clone / "config.json").read_text())
    cfg["id2label"] = {"0": "negative", "1": "neutral", "2": "positive"}
    (clone / "config.json").write_text(json.dumps(cfg))
    info = json.loads((clone / "run_info.json").read_text())
    info["labels"] = ["negative", "neutral", "positive"]
    (clone / "run_info.json").write_text(json.dumps(info))
    proc = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--run-name", "three-labels", "--port",
                           str(free_port())], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "outputs 2 logits but the run has 3 labels" in last
    assert "Traceback" not in proc.stderr


def test_unknown_run_is_one_line_error(tiny_run):
    proc = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--run-name", "nope"], capture_output=True,
                          text=True, env=tiny_run["env"], cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr and "tiny" in proc.stderr


def test_binds_to_loopback_by_default():
    import serve

    assert serve.build_parser().parse_args(["--run-name", "x"]).host == "127.0.0.1"


# ------------------------------------------------------------------ benchmarks/serve_load.py


def test_load_benchmark_smoke(tiny_run, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--run-name", "tiny", "--smoke",
                           "--out-dir", tmp_path], capture_output=True, text=True, env=tiny_run["env"], cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "serve_load.json").read_text())
    assert [lvl["concurrency"] for lvl in report["levels"]] == [1, 8, 32]
    for lvl in report["levels"]:
        assert lvl["errors"] == 0 and lvl["ok"] > 0
        assert lvl["latency_ms"]["p50"] <= lvl["latency_ms"]["p95"] <= lvl["latency_ms"]["p99"]
    assert "p99" in (tmp_path / "serve_load.md").read_text()


def test_batcher_refuses_past_max_pending_and_survives_a_failing_job():
    """In process, with a slow fake predictor: past --max-pending waiting requests get 503; a job that raises fails
    its own requests only; concurrent requests are gathered into one job."""
    import serve

    class SlowPredictor:
        def __init__(self):
            self.jobs, self.delay = [], 0.3

        def predict(self, texts):
            self.jobs.append(list(texts))
            time.sleep(self.delay)
            if "boom" in texts:
                raise RuntimeError("boom")
            return [{"label": t} for t in texts]

    async def scenario():
        fake = SlowPredictor()
        b = serve.Batcher(fake, serve.Settings(max_pending=3))
        b.start()
        try:
            first = asyncio.create_task(b.submit(["a"]))
            await asyncio.sleep(0.05)  # "a" is running; the next ones wait and are gathered into one job
            waiting = [asyncio.create_task(b.submit([t])) for t in ("b", "c")]
            await asyncio.sleep(0.01)
            with pytest.raises(serve.BadRequest) as refused:
                await b.submit(["d"])
            assert refused.value.status == 503 and "server busy" in refused.value.detail
            assert [r["label"] for r in await first] == ["a"]
            assert [(await w)[0]["label"] for w in waiting] == ["b", "c"]
            assert fake.jobs == [["a"], ["b", "c"]]
            with pytest.raises(RuntimeError):
                await b.submit(["boom"])
            assert (await b.submit(["e"]))[0]["label"] == "e"
            assert b.pending == 0
        finally:
            await b.stop()
        fake = SlowPredictor()
        b = serve.Batcher(fake, serve.Settings(request_timeout_s=0.1))
        b.start()
        try:
            with pytest.raises(serve.BadRequest) as late:
                await asyncio.gather(b.submit(["f"]), b.submit(["g"]))
            assert late.value.status == 503 and "--request-timeout" in late.value.detail
            assert b.pending == 0
            await asyncio.sleep(0.4)  # the timed-out job finishes; its results go nowhere
            fake.delay = 0.0
            assert (await b.submit(["h"]))[0]["label"] == "h"
        finally:
            await b.stop()

    asyncio.run(scenario())
