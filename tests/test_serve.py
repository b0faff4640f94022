"""The REST service (serve.py) started for real with uvicorn on a free loopback port, talked to over HTTP, with one
and two worker processes; the Python predictor (predictor.py) it shares with the scripts; the per-text evaluation;
the load benchmark's smoke mode. Answers are checked against an independent computation: the tokenizer and an ONNX
Runtime session on each text alone, without the project's batching code."""

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ROOT, record_as_current, run_step, run_steps, tiny_workspace, train_tiny

sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load  # noqa: E402
from serve_load import free_port, scrape, stop_server, wait_for_workers  # noqa: E402

from common import PipelineError  # noqa: E402

LIMITS = {"max_batch": 8, "max_chars": 300, "max_body_bytes": 20000}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny BERT through train (1 epoch) -> export -> quantize -> INT8 eval, outputs in a tmp folder."""
    w = tiny_workspace(tmp_path_factory.mktemp("serve"))
    train_tiny(w, "tiny", "--epochs", 1, "--max-train-samples", 300)
    run_steps("tiny", "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_onnx_int8_dynamic.py", env=w["env"])
    run_step("eval_onnx_int8_dynamic.py", "--run-name", "tiny", "--per-text", env=w["env"])
    return {"tmp": w["tmp"], "env": w["env"], "run": w["tmp"] / "models" / "tiny",
            "results": w["tmp"] / "results" / "tiny", "texts": w["test_texts"]}


def start_server(env, run_name, *extra, timeout=240):
    """serve.py on a free loopback port (1 thread), its log beside the run's models; (process, base url)."""
    port = free_port()
    log = open(Path(env["QAT_MODELS_DIR"]).parent / f"serve-{port}.log", "w+")
    try:
        return serve_load.start_server(run_name, port, log, "--threads", 1, *extra, env=env, timeout=timeout)
    except PipelineError as e:
        raise AssertionError(str(e))


def server_log(env, url) -> str:
    return (Path(env["QAT_MODELS_DIR"]).parent / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()


@pytest.fixture(scope="module")
def server(tiny_run):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    proc, url = start_server(tiny_run["env"], "tiny", *args)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield {"url": url, "client": client, "proc": proc}
    finally:
        stop_server(proc)


def plain_int8_session(run: Path):
    """The run's tokenizer and a plain ONNX Runtime session on its INT8 file (one thread), its input names and
    max_length: the references below use nothing of predictor.py, common.make_batches or serve.py."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(run / "model_qat_int8_dynamic.onnx"), opts, providers=["CPUExecutionProvider"])
    max_length = json.loads((run / "run_info.json").read_text())["max_length"]
    return AutoTokenizer.from_pretrained(run), session, [i.name for i in session.get_inputs()], max_length


@pytest.fixture(scope="module")
def reference(tiny_run):
    """text -> logits computed without predictor.py, common.make_batches or serve.py: the run's tokenizer on the text
    alone (so no padding) and a plain ONNX Runtime session on the INT8 file."""
    tokenizer, session, names, max_length = plain_int8_session(tiny_run["run"])
    cache = {}

    def logits(text: str) -> np.ndarray:
        if text not in cache:
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
            cache[text] = session.run(None, {k: enc[k].astype(np.int64) for k in names})[0][0]
        return cache[text]

    return logits


@pytest.fixture(scope="module")
def labels(tiny_run):
    id2label = json.loads((tiny_run["run"] / "config.json").read_text())["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def mixed_lengths(texts, n):
    """n texts, neither sorted by length nor of one length: batching with padding would change their results."""
    chosen = sorted(texts, key=len)[:: max(1, len(texts) // n)][:n]
    return chosen[1::2] + chosen[0::2][::-1]


def assert_answers_match_logits(predictions, logits, labels):
    """Each answer is the softmax of its row of logits: probabilities, label and score, in order."""
    assert len(predictions) == len(logits)
    for i, (got, z) in enumerate(zip(predictions, logits)):
        z = np.asarray(z, dtype=np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        assert list(got["probabilities"]) == labels
        np.testing.assert_allclose([got["probabilities"][l] for l in labels], p, rtol=0, atol=1e-6, err_msg=f"row {i}")
        assert got["label"] == labels[int(p.argmax())] and got["score"] == pytest.approx(p.max(), abs=1e-6)


def assert_matches_reference(predictions, texts, reference, labels):
    """Each answer is that text's own result, computed alone; in the order of texts."""
    assert_answers_match_logits(predictions, [reference(t) for t in texts], labels)


def predict_count(url, status="200") -> float:
    return scrape(url).get(("serve_requests_total", (("endpoint", "/predict"), ("status", status))), 0.0)


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


def test_per_text_predictor_equals_each_text_run_alone(tiny_run, reference):
    """Predictor(per_text=True) on a list of mixed lengths: each row the logits of that text run alone, in order
    (catches padding, a shared batch or rows put back in the wrong order)."""
    from predictor import Predictor

    texts = mixed_lengths(tiny_run["texts"], 16)
    got = Predictor(tiny_run["run"], threads=1, per_text=True).predict_logits(texts)
    np.testing.assert_allclose(got, np.stack([reference(t) for t in texts]), rtol=0, atol=1e-6)


def test_per_text_evaluation_is_each_text_alone(tiny_run, reference):
    """eval_onnx_int8_dynamic.py --per-text: its own stage and file, every test text's logits as run alone."""
    m = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic_per_text.json").read_text())
    assert m["stage"] == "onnx_int8_dynamic_per_text" and m["batch_size"] == 1 and m["n_samples"] == len(tiny_run["texts"])
    np.testing.assert_allclose(np.array(m["logits"]), np.stack([reference(t) for t in tiny_run["texts"]]),
                               rtol=0, atol=2e-6)  # the file rounds logits to 6 decimals
    batched = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    assert batched["stage"] == "onnx_int8_dynamic" and batched["batch_size"] == 32


def test_predictor_scores_each_text_alone_by_default(tiny_run, reference):
    """Predictor(run) answers as the service does (one text per batch): each row the text's logits alone."""
    from predictor import Predictor

    texts = mixed_lengths(tiny_run["texts"], 16)
    p = Predictor(tiny_run["run"], threads=1)
    assert p.batch_size == 1 and p.per_text
    np.testing.assert_allclose(p.predict_logits(texts), np.stack([reference(t) for t in texts]), rtol=0, atol=1e-6)


def test_predictor_takes_a_single_string_as_one_text(tiny_run):
    from predictor import Predictor

    p = Predictor(tiny_run["run"], threads=1)
    text = "makanannya enak"
    one = p.predict(text)
    assert isinstance(one, dict) and one == p.predict([text])[0]
    assert p.predict_logits(text).shape == (2,)


@pytest.mark.parametrize("texts, error, match", [
    (["bagus", ""], ValueError, "text 1 is empty or only whitespace"),
    ([" \n "], ValueError, "text 0 is empty or only whitespace"),
    (["bagus", "ok", "\ud800"], ValueError, "text 2 is not valid Unicode"),
    (["bagus", 3], TypeError, "item 1 is int"),
])
def test_predictor_refuses_what_the_service_refuses(tiny_run, texts, error, match):
    """Empty texts and texts the tokenizer cannot take: an error naming the index, not a label or a TypeError
    from the tokenizer."""
    from predictor import Predictor

    p = Predictor(tiny_run["run"], threads=1)
    with pytest.raises(error, match=re.escape(match)):
        p.predict(texts)


def test_predictor_refuses_a_model_not_matching_labels(tiny_run, tmp_path):
    from common import PipelineError
    from predictor import Predictor

    clone = tmp_path / "three"
    shutil.copytree(tiny_run["run"], clone)
    for name, key in (("config.json", "id2label"), ("run_info.json", "labels")):
        cfg = json.loads((clone / name).read_text())
        cfg[key] = {"0": "a", "1": "b", "2": "c"} if key == "id2label" else ["a", "b", "c"]
        (clone / name).write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="is stale"):  # the models were made from the earlier config.json
        Predictor(clone, threads=1)
    record_as_current(clone)
    with pytest.raises(PipelineError, match="outputs 2 logits but the run has 3 labels"):
        Predictor(clone, threads=1)


# ------------------------------------------------------------------ serve.py over HTTP


def test_health_and_metadata(server, tiny_run):
    c = server["client"]
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["worker_pid"] > 0
    meta = c.get("/metadata").json()
    model = tiny_run["run"] / "model_qat_int8_dynamic.onnx"
    assert meta["labels"] == ["negative", "positive"]
    assert meta["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    quant = json.loads((tiny_run["run"] / "quant_config.json").read_text())
    for key in ("weight_type", "per_channel", "reduce_range"):
        assert meta["quantization"][key] == quant[key]
    # per-text service: the metrics of the per-text evaluation (batch of 1), not the batched one
    metrics = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic_per_text.json").read_text())
    assert meta["test_metrics_file"] == "metrics_onnx_int8_dynamic_per_text.json"
    assert meta["test_metrics"]["batch_size"] == 1
    assert meta["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert meta["test_metrics"]["f1_macro"] == metrics["f1_macro"]
    assert "test_metrics_note" not in meta
    assert meta["service"]["batch_mode"] == "per-text" and meta["service"]["max_batch"] == LIMITS["max_batch"]
    assert meta["service"]["workers"] == 1 and meta["service"]["threads"] == 1


def test_metadata_says_when_the_served_mode_was_not_evaluated(tiny_run, tmp_path):
    """No metrics file for the batch mode served: no metrics of the other mode, and the command that makes them."""
    import serve
    from predictor import Predictor

    predictor = Predictor(tiny_run["run"], threads=1)
    for mode, flag in (("per-text", " --per-text"), ("shared", "")):
        out = serve.served_metrics(tmp_path, predictor, serve.Settings(batch_mode=mode))
        assert out["test_metrics"] is None
        assert f"`python eval_onnx_int8_dynamic.py --run-name tiny{flag}`" in out["test_metrics_note"]
    (tmp_path / "metrics_onnx_int8_dynamic.json").write_text(
        (tiny_run["results"] / "metrics_onnx_int8_dynamic.json").read_text())
    assert serve.served_metrics(tmp_path, predictor, serve.Settings(batch_mode="per-text"))["test_metrics"] is None
    shared = serve.served_metrics(tmp_path, predictor, serve.Settings(batch_mode="shared", batch_size=32))
    assert shared["test_metrics"]["batch_size"] == 32 and "test_metrics_note" not in shared


@pytest.mark.parametrize("change, fragment", [
    ({"lineage": {"model_qat_int8_dynamic.onnx": "0" * 64}}, "measured on another model_qat_int8_dynamic.onnx"),
    ({"max_length": 7}, "measured with max_length 7")])
def test_metadata_hides_metrics_of_another_model(tiny_run, tmp_path, change, fragment):
    """Metrics measured on another INT8 file (re-quantized since) or with another max_length are not served as the
    served model's."""
    import serve
    from predictor import Predictor

    m = json.loads((tiny_run["results"] / "metrics_onnx_int8_dynamic_per_text.json").read_text())
    (tmp_path / "metrics_onnx_int8_dynamic_per_text.json").write_text(json.dumps({**m, **change}))
    out = serve.served_metrics(tmp_path, Predictor(tiny_run["run"], threads=1), serve.Settings(batch_mode="per-text"))
    assert out["test_metrics"] is None and fragment in out["test_metrics_note"]


def test_predictions_equal_an_independent_computation(server, tiny_run, reference, labels):
    """One request of texts of mixed lengths: every answer is that text's own result, in request order."""
    texts = mixed_lengths(tiny_run["texts"], LIMITS["max_batch"])
    r = server["client"].post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert_matches_reference(r.json()["predictions"], texts, reference, labels)
    # deterministic per text: the same text alone gets the same answer as in a request with others
    alone = server["client"].post("/predict", json={"texts": [texts[3]]}).json()["predictions"][0]
    assert alone == r.json()["predictions"][3]


LONG = "x" * (LIMITS["max_chars"] + 1)


@pytest.mark.parametrize("case, content, status, fragment", [
    ("empty list", {"texts": []}, 422, "is empty"),
    ("empty text", {"texts": ["ok", ""]}, 422, '"texts"[1] is empty or only whitespace'),
    ("whitespace text", {"texts": [" \n\t "]}, 422, '"texts"[0] is empty or only whitespace'),
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
    ("lone surrogate", b'{"texts": ["ok", "\\ud800"]}', 422, '"texts"[1] is not valid Unicode'),
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


def test_body_over_the_limit_gets_413_with_urllib(server):
    """A client that sends the whole body before reading the answer (Python's urllib) gets the 413 and its message,
    not a broken pipe or a reset: the service reads the refused body (up to 16 MiB) before answering. 5 MB: more
    than the socket buffers hold (answered at once, 5 MB got "connection reset" on every try). Three tries."""
    body = json.dumps({"texts": ["kata " * 1_000_000]}).encode()
    assert len(body) == 5_000_015
    for _ in range(3):
        req = urllib.request.Request(f"{server['url']}/predict", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 413
        assert "over the limit of 20000 bytes" in json.loads(e.value.read())["detail"]
    assert server["client"].get("/health").status_code == 200


def test_burst_of_concurrent_requests(server, tiny_run, reference, labels):
    """200 requests, 16 in flight at a time (gathered into shared jobs by the service): no error, and every answer
    equals that text computed alone."""
    texts = tiny_run["texts"][:50]
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
        assert_matches_reference(body["predictions"], batch, reference, labels)
    assert server["client"].get("/health").json()["pending"] == 0


def test_metrics_count_requests_by_endpoint_and_status(server):
    """/metrics (Prometheus text format) counts what this test sends: requests by endpoint and status, their
    latencies, the texts scored; nothing waits afterwards."""
    from prometheus_client.parser import text_string_to_metric_families

    c, url = server["client"], server["url"]
    before = scrape(url)
    for n in (1, 2, 3):
        assert c.post("/predict", json={"texts": ["bagus"] * n}).status_code == 200
    assert c.post("/predict", json={"texts": []}).status_code == 422
    assert c.get("/health").status_code == 200
    assert c.get("/no-such-page").status_code == 404
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(r.text) for s in f.samples}

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("serve_requests_total", endpoint="/predict", status="200") == 3
    assert delta("serve_requests_total", endpoint="/predict", status="422") == 1
    assert delta("serve_requests_total", endpoint="/health", status="200") == 1
    assert delta("serve_requests_total", endpoint="other", status="404") == 1
    assert delta("serve_request_duration_seconds_count", endpoint="/predict") == 4
    assert delta("serve_request_duration_seconds_bucket", endpoint="/predict", le="+Inf") == 4
    assert delta("serve_request_duration_seconds_sum", endpoint="/predict") > 0
    assert delta("serve_texts_scored_total") == 6
    assert after[("serve_queue_depth", ())] == 0 and after[("serve_workers", ())] == 1


def test_two_workers_metrics_sum_over_workers(tiny_run, tmp_path):
    """--workers 2: requests on fresh connections reach both processes, and /metrics, whichever worker answers it,
    counts every request once. A PROMETHEUS_MULTIPROC_DIR left in the environment with counts of an earlier
    service is not used: each start gets a fresh folder, removed at exit."""
    stale = tmp_path / "stale-metrics"
    stale.mkdir()
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; Counter('serve_requests', 'x', "
                    "['endpoint', 'status']).labels('/predict', '200').inc(1000)"],
                   env={**tiny_run["env"], "PROMETHEUS_MULTIPROC_DIR": str(stale)}, check=True, timeout=120)
    stale_files = sorted(stale.iterdir())
    assert stale_files
    env = {**tiny_run["env"], "PROMETHEUS_MULTIPROC_DIR": str(stale)}
    proc, url = start_server(env, "tiny", "--workers", 2)
    try:
        metrics_dir = Path(re.search(r"metrics of all workers in (\S+)", server_log(env, url)).group(1))
        assert metrics_dir.is_dir() and metrics_dir != stale
        wait_for_workers(url, 2)
        texts = tiny_run["texts"][:8]

        def predict_then_ask_who(text):
            with httpx.Client(base_url=url, timeout=60) as client:  # a new connection: either worker may take it
                r = client.post("/predict", json={"texts": [text]})
                return r.status_code, client.get("/health").json()["worker_pid"]  # same connection, same worker

        answers = []
        with ThreadPoolExecutor(8) as pool:
            for _ in range(25):  # rounds until both workers have answered (the kernel picks who accepts)
                answers += pool.map(predict_then_ask_who, texts)
                if len({pid for _, pid in answers}) == 2:
                    break
        assert {status for status, _ in answers} == {200}
        assert len({pid for _, pid in answers}) == 2, "every request reached the same worker"
        scrapes = [scrape(url) for _ in range(6)]  # fresh connections: answered by either worker
        for m in scrapes:
            assert m[("serve_requests_total", (("endpoint", "/predict"), ("status", "200")))] == len(answers)
            assert m[("serve_texts_scored_total", ())] == len(answers)
            assert m[("serve_workers", ())] == 2

        # A worker killed outright: uvicorn starts a replacement, which drops the dead one's gauges; counts stay.
        pids = {pid for _, pid in answers}
        os.kill(min(pids), signal.SIGKILL)

        def who():
            return httpx.get(f"{url}/health", timeout=60).json()["worker_pid"]

        deadline = time.monotonic() + 240  # the replacement loads the model first
        with ThreadPoolExecutor(8) as pool:
            while not set(pool.map(lambda _: who(), range(8))) - pids:
                assert time.monotonic() < deadline, "no replacement worker answered within 240 s"
                time.sleep(0.5)
        m = scrape(url)
        assert m[("serve_workers", ())] == 2
        assert m[("serve_requests_total", (("endpoint", "/predict"), ("status", "200")))] == len(answers)
    finally:
        stop_server(proc)
    assert not metrics_dir.exists()
    assert sorted(stale.iterdir()) == stale_files


def batched_reference_logits(run: Path, texts, batch_size: int) -> np.ndarray:
    """What --batch-mode shared promises, computed without the project's code: texts sorted by token length (ties in
    request order), cut into batches of batch_size, each padded to its longest text, one ONNX Runtime call each."""
    tokenizer, session, names, max_length = plain_int8_session(run)
    n_tokens = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (n_tokens[i], i))
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        for i, row in zip(idx, session.run(None, {k: enc[k].astype(np.int64) for k in names})[0]):
            out[i] = row
    return np.stack(out)


def test_shared_batch_mode_batches_by_length(tiny_run, reference, labels):
    """--batch-mode shared: one request's texts batched by length, --batch-size per batch, padded per batch; and
    /metadata publishes the batched evaluation, saying its batch size differs from the service's."""
    texts = mixed_lengths(tiny_run["texts"], 10)
    expected = batched_reference_logits(tiny_run["run"], texts, 4)
    alone = np.stack([reference(t) for t in texts])
    assert np.abs(expected - alone).max() > 1e-5  # else this test could not tell shared from per-text batching
    proc, url = start_server(tiny_run["env"], "tiny", "--batch-mode", "shared", "--batch-size", 4)
    try:
        r = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert_answers_match_logits(r.json()["predictions"], expected, labels)
        meta = httpx.get(f"{url}/metadata", timeout=10).json()
        assert meta["service"]["batch_mode"] == "shared"
        assert meta["test_metrics_file"] == "metrics_onnx_int8_dynamic.json" and meta["test_metrics"]["batch_size"] == 32
        assert "measured with batches of 32" in meta["test_metrics_note"]
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
    record_as_current(clone)  # as if re-exported: the INT8 model's output width is what gives it away
    proc = run_step("serve.py", "--run-name", "three-labels", "--port", free_port(), env=env, check=False, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "outputs 2 logits but the run has 3 labels" in last
    assert "Traceback" not in proc.stderr


def test_busy_port_is_one_line_error_before_serving(tiny_run):
    """Another process listens on the port: one line, and no "serving ... on" printed before it."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        proc = run_step("serve.py", "--run-name", "tiny", "--port", port, env=tiny_run["env"], check=False, timeout=300)
    assert proc.returncode == 2 and "serving" not in proc.stdout, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}"), proc.stderr


def test_a_failed_inference_is_logged_with_its_traceback(caplog):
    """A 500 answer is logged (logging, with the traceback), besides its one-line detail to the client."""
    from fastapi.testclient import TestClient

    import serve

    class FailingPredictor:
        def predict(self, texts):
            raise RuntimeError("kaboom\nsecond line")

    app = serve.create_app(FailingPredictor(), serve.Settings(), {"run": "fake"})
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        r = client.post("/predict", json={"texts": ["bagus"]})
    assert r.status_code == 500 and r.json()["detail"] == "inference failed: RuntimeError: kaboom second line"
    records = [rec for rec in caplog.records if "inference failed" in rec.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.ERROR and records[0].exc_info
    assert "Traceback" in caplog.text and "kaboom" in caplog.text


def test_unknown_run_is_one_line_error(tiny_run):
    proc = run_step("serve.py", "--run-name", "nope", env=tiny_run["env"], check=False, timeout=120)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr and "tiny" in proc.stderr


def test_binds_to_loopback_by_default():
    import serve

    assert serve.build_parser().parse_args(["--run-name", "x"]).host == "127.0.0.1"


# ------------------------------------------------------------------ benchmarks/serve_load.py


def test_load_benchmark_smoke(tiny_run, tmp_path):
    proc = run_step("benchmarks/serve_load.py", "--run-name", "tiny", "--smoke", "--out-dir", tmp_path,
                    env=tiny_run["env"], check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "serve_load.json").read_text())
    assert [(lvl["workers"], lvl["concurrency"]) for lvl in report["levels"]] == [(w, c) for w in (1, 2) for c in (1, 8, 32)]
    for lvl in report["levels"]:
        assert lvl["errors"] == 0 and lvl["ok"] == lvl["requests_sent"] > 0
        # the client's count of answered requests, checked against the server's own /metrics
        assert lvl["server_counted_ok"] == lvl["ok"]
    md = (tmp_path / "serve_load.md").read_text()
    assert "| workers | clients |" in md and "equal the clients' count at every level" in md


class GatedPredictor:
    """A fake predictor (the Batcher's scheduling is under test, not the model) whose jobs wait for the test to
    open the gate: what runs when is decided by events, not by sleeps."""

    def __init__(self):
        self.jobs, self.gate, self.started = [], threading.Event(), threading.Semaphore(0)

    def predict(self, texts):
        self.jobs.append(list(texts))
        self.started.release()
        assert self.gate.wait(60), "the test never opened the gate"
        if "boom" in texts:
            raise RuntimeError("boom")
        return [{"label": t} for t in texts]


async def job_started(fake: GatedPredictor):
    assert await asyncio.to_thread(fake.started.acquire, True, 60), "no job started within 60 s"


async def until(condition, what: str):
    for _ in range(60_000):  # at most ~60 s on a loaded machine; usually a few iterations
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


def test_batcher_refuses_past_max_pending_and_survives_a_failing_job():
    """In process: past --max-pending waiting requests get 503; requests waiting while a job runs are gathered into
    the next job; a job that raises fails its own requests only; a request not answered within --request-timeout
    gets 503 and its late result goes nowhere."""
    import serve

    async def scenario():
        fake = GatedPredictor()
        b = serve.Batcher(fake, serve.Settings(max_pending=3))
        b.start()
        try:
            first = asyncio.create_task(b.submit(["a"]))
            await job_started(fake)  # "a" is running and held; the next ones wait
            waiting = [asyncio.create_task(b.submit([t])) for t in ("b", "c")]
            await until(lambda: b.pending == 3, "b and c wait")
            with pytest.raises(serve.BadRequest) as refused:
                await b.submit(["d"])
            assert refused.value.status == 503 and "server busy" in refused.value.detail
            fake.gate.set()
            assert [r["label"] for r in await first] == ["a"]
            assert [(await w)[0]["label"] for w in waiting] == ["b", "c"]
            assert fake.jobs == [["a"], ["b", "c"]]
            with pytest.raises(RuntimeError):
                await b.submit(["boom"])
            assert (await b.submit(["e"]))[0]["label"] == "e"
            assert b.pending == 0
        finally:
            fake.gate.set()
            await b.stop()

        fake = GatedPredictor()
        b = serve.Batcher(fake, serve.Settings(request_timeout_s=0.2))
        b.start()
        try:  # the gate stays shut, so these cannot be answered in time however fast or slow the machine is
            with pytest.raises(serve.BadRequest) as late:
                await asyncio.gather(b.submit(["f"]), b.submit(["g"]))
            assert late.value.status == 503 and "--request-timeout" in late.value.detail
            assert b.pending == 0
            b.settings.request_timeout_s = 60.0
            fake.gate.set()  # the timed-out job finishes; its results go nowhere
            assert (await b.submit(["h"]))[0]["label"] == "h"
            assert fake.jobs[-1] == ["h"]
        finally:
            fake.gate.set()
            await b.stop()

    asyncio.run(scenario())


def test_batcher_a_failing_request_fails_alone():
    """Requests gathered into one job (as --batch-mode shared does) with one that makes inference fail: only that
    request fails; the others get their answers."""
    import serve

    async def scenario():
        fake = GatedPredictor()
        b = serve.Batcher(fake, serve.Settings())
        b.start()
        try:
            first = asyncio.create_task(b.submit(["a"]))
            await job_started(fake)  # "a" holds the gate: the next requests wait together
            good = asyncio.create_task(b.submit(["x", "y"]))
            bad = asyncio.create_task(b.submit(["boom"]))
            later = asyncio.create_task(b.submit(["z"]))
            await until(lambda: b.pending == 4, "the three wait")
            fake.gate.set()
            assert [r["label"] for r in await first] == ["a"]
            assert [r["label"] for r in await good] == ["x", "y"]
            with pytest.raises(RuntimeError, match="boom"):
                await bad
            assert [r["label"] for r in await later] == ["z"]
            assert fake.jobs == [["a"], ["x", "y", "boom", "z"], ["x", "y"], ["boom"], ["z"]]
            assert b.pending == 0
        finally:
            fake.gate.set()
            await b.stop()

    asyncio.run(scenario())
