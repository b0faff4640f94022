"""predict.py on a tiny INT8 run, from the shell: CSV/JSONL/Parquet round trips, equality with
Predictor(per_text=True), rows without text, worker processes, kill and resume, one-line errors."""

import json
import signal
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, SMSA, run_step, run_steps, tiny_workspace, train_tiny

PROB = ["pred_prob_negative", "pred_prob_positive"]
ADDED = ["pred_status", "pred_label", "pred_score", *PROB]


def build_tiny_int8_run(tmp) -> dict:
    """A tiny BERT through train (1 epoch) -> export -> quantize; the workspace plus the run's folder."""
    w = tiny_workspace(tmp)
    train_tiny(w, "tiny", "--epochs", 1, "--max-train-samples", 300)
    run_steps("tiny", "export_to_onnx.py", "quantize_onnx_dynamic.py", env=w["env"])
    texts = pd.read_csv(w["data"] / "train.csv")["text"].tolist()
    return {**w, "run": w["tmp"] / "models" / "tiny", "texts": texts}


def input_table(texts, n: int) -> pd.DataFrame:
    """n rows: an id that looks like a number but is not one ('007'), the text, a gold label (so the added
    columns need --prefix), a text with quotes, commas, line breaks and non-ASCII, and rows without text."""
    rows = [{"id": f"{i:03d}", "text": texts[i % len(texts)], "label": "positive" if i % 2 else "negative"}
            for i in range(n)]
    rows[3]["text"] = 'kata "mereka", enak\nsekali — ü'
    rows[5]["text"] = ""
    rows[8]["text"] = "   "
    return pd.DataFrame(rows)


def predict(w, *args, check=True, env=None, timeout=900):
    return run_step("predict.py", "--run-name", "tiny", "--no-progress", *args, env=env or w["env"], check=check,
                    timeout=timeout)


def expected_predictions(run, texts):
    from predictor import Predictor

    return Predictor(run, threads=1, per_text=True).predict(texts)


def assert_scores_equal(out: pd.DataFrame, texts, run):
    ok = out["pred_status"] == "ok"
    expected = expected_predictions(run, [t for t, good in zip(texts, ok) if good])
    got = out[ok]
    assert got["pred_label"].tolist() == [e["label"] for e in expected]
    for col, label in zip(PROB, ("negative", "positive")):
        assert (got[col].astype(float) - [e["probabilities"][label] for e in expected]).abs().max() <= 1e-12
    assert (got["pred_score"].astype(float) - [e["score"] for e in expected]).abs().max() <= 1e-12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_int8_run(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def csv_input(tiny):
    df = input_table(tiny["texts"], 230)
    path = tiny["tmp"] / "in.csv"
    df.to_csv(path, index=False)
    return {"path": path, "df": df}


def test_csv_round_trip(tiny, csv_input, tmp_path):
    """Every row, in order, with its columns exactly as written (no '007' -> 7), plus the scores of
    Predictor(per_text=True), over several chunks; empty texts get a status and the job finishes."""
    out_path = tmp_path / "out.csv"
    proc = predict(tiny, "--input", csv_input["path"], "--output", out_path, "--chunk-rows", 50, "--prefix", "pred_")
    out = pd.read_csv(out_path, dtype=str, keep_default_na=False)
    df = csv_input["df"]
    assert list(out.columns) == list(df.columns) + ADDED
    pd.testing.assert_frame_equal(out[list(df.columns)], df.astype(str), check_dtype=False)
    status = out["pred_status"].tolist()
    assert status[5] == status[8] == "empty_text" and status.count("ok") == len(df) - 2
    assert out.loc[5, "pred_label"] == "" and out.loc[5, "pred_score"] == ""
    assert_scores_equal(out, df["text"].tolist(), tiny["run"])
    assert "scored 230 rows" in proc.stdout and "ok 228, empty_text 2" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no side file left


def test_jsonl_round_trip(tiny, tmp_path):
    """Records come back as they were (key order, big integers, nested values, missing keys), plus the added
    keys; null or missing text -> missing_text, a number -> not_text."""
    records = [{"text": t, "id": i, "big": 12345678901234567890, "meta": {"k": [1, 2]}}
               for i, t in enumerate(tiny["texts"][:40])]
    records[2] = {"id": 2, "text": None}
    records[4] = {"id": 4}
    records[6]["text"] = 17
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n")
    predict(tiny, "--input", src, "--output", tmp_path / "out.jsonl", "--chunk-rows", 16, "--prefix", "pred_")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(records)
    for rec, o in zip(records, out):
        assert list(o)[:len(rec)] == list(rec) and {k: o[k] for k in rec} == rec
        assert list(o)[len(rec):] == ADDED
    assert [o["pred_status"] for o in out[:8]] == ["ok", "ok", "missing_text", "ok", "missing_text", "ok",
                                                   "not_text", "ok"]
    assert out[2]["pred_label"] is None and out[2]["pred_prob_negative"] is None
    frame = pd.DataFrame(out)
    assert_scores_equal(frame, [r.get("text") for r in records], tiny["run"])


def test_parquet_round_trip(tiny, tmp_path):
    """Arrow types kept (int64, timestamp, list), nulls kept, the added columns typed; one row group per 65,536
    rows, not one per chunk."""
    n = 120
    texts = [tiny["texts"][i] for i in range(n)]
    texts[7] = None
    table = pa.table({"id": pa.array(range(n), pa.int64()), "text": texts,
                      "when": pa.array([1_700_000_000_000 + i for i in range(n)], pa.timestamp("ms")),
                      "tags": [[i, i + 1] if i % 3 else None for i in range(n)]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=50)
    predict(tiny, "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--chunk-rows", 32,
            "--prefix", "pred_")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == table.schema.names + ADDED
    assert out.select(table.schema.names).equals(table)
    assert out.schema.field("pred_score").type == pa.float64()
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 1
    assert out.column("pred_status")[7].as_py() == "missing_text" and out.column("pred_label")[7].as_py() is None
    frame = out.to_pandas()
    assert_scores_equal(frame, texts, tiny["run"])


def test_two_workers_write_the_same_bytes(tiny, csv_input, tmp_path):
    """Results of 2 processes come back in input order, with the same numbers as one process."""
    for workers in (1, 2):
        predict(tiny, "--input", csv_input["path"], "--output", tmp_path / f"w{workers}.csv", "--chunk-rows", 20,
                "--prefix", "pred_", "--workers", workers)
    assert (tmp_path / "w1.csv").read_bytes() == (tmp_path / "w2.csv").read_bytes()


def test_stdin_to_stdout(tiny, csv_input, tmp_path):
    predict(tiny, "--input", csv_input["path"], "--output", tmp_path / "file.csv", "--prefix", "pred_")
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run-name", "tiny", "--input", "-",
                           "--output", "-", "--format", "csv", "--prefix", "pred_", "--no-progress"],
                          stdin=open(csv_input["path"], "rb"), capture_output=True, env=tiny["env"], cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == (tmp_path / "file.csv").read_bytes()
    assert b"scored 230 rows into stdout" in proc.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_kill_and_resume_gives_the_same_output(tiny, csv_input, tmp_path, fmt):
    """SIGKILL after 2 recorded chunks, with the 3rd chunk's output already written: nothing under the final
    name; --resume cuts the unrecorded output, scores chunks 3.. only, and the file equals an uninterrupted run."""
    src = csv_input["path"]
    if fmt == "parquet":
        src = tmp_path / "in.parquet"
        csv_input["df"].to_parquet(src)
    args = ["--input", src, "--chunk-rows", 40, "--prefix", "pred_"]
    predict(tiny, *args, "--output", tmp_path / f"whole.{fmt}")
    out = tmp_path / f"out.{fmt}"
    killed = predict(tiny, *args, "--output", out, check=False,
                     env={**tiny["env"], "QAT_PREDICT_KILL_AFTER_CHUNKS": "2"})
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    progress = json.loads((tmp_path / f"out.{fmt}.progress.json").read_text())
    assert progress["chunks_done"] == 2 and progress["rows_done"] == 80
    if fmt == "csv":
        assert (tmp_path / "out.csv.partial").stat().st_size > progress["output_bytes"]  # chunk 3 was written
    else:
        assert len(list((tmp_path / "out.parquet.parts").iterdir())) == 3
    resumed = predict(tiny, *args, "--output", out, "--resume")
    assert out.read_bytes() == (tmp_path / f"whole.{fmt}").read_bytes()
    assert "scored 230 rows" in resumed.stdout and "ok 228, empty_text 2" in resumed.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.")) == [f"out.{fmt}"]


def test_resume_refuses_another_input(tiny, csv_input, tmp_path):
    src = tmp_path / "in.csv"
    csv_input["df"].to_csv(src, index=False)
    args = ["--input", src, "--output", tmp_path / "out.csv", "--chunk-rows", 40, "--prefix", "pred_"]
    predict(tiny, *args, check=False, env={**tiny["env"], "QAT_PREDICT_KILL_AFTER_CHUNKS": "1"})
    csv_input["df"].head(100).to_csv(src, index=False)  # the input changed since
    proc = predict(tiny, *args, "--resume", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "cannot resume" in proc.stderr and "another input" in proc.stderr
    assert (tmp_path / "out.csv.partial").exists() and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("case, match", [
    ("missing file", "not found"),
    ("no text column", "has no column 'body'"),
    ("unknown extension", "unknown extension '.txt'"),
    ("unknown run", "no run 'nope'"),
    ("added column exists", "pass --prefix"),
    ("stdin without format", "needs --format"),
])
def test_bad_input_gets_one_line_error(tiny, csv_input, tmp_path, case, match):
    src, extra, run = str(csv_input["path"]), ["--prefix", "pred_"], "tiny"
    if case == "missing file":
        src = str(tmp_path / "nope.csv")
    elif case == "no text column":
        extra += ["--text-column", "body"]
    elif case == "unknown extension":
        (tmp_path / "in.txt").write_text("text\nhalo\n")
        src = str(tmp_path / "in.txt")
    elif case == "unknown run":
        run = "nope"
    elif case == "added column exists":
        extra = []  # the input has a 'label' column
    elif case == "stdin without format":
        src = "-"
    out = tmp_path / ("out.txt" if case == "unknown extension" else "out.csv")
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run-name", run, "--input", src,
                           "--output", str(out), "--no-progress", *extra], capture_output=True, text=True,
                          env=tiny["env"], cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


@pytest.mark.skipif(not SMSA.is_dir(), reason="../shared/data/smsa not present (the benchmark scores its texts)")
def test_batch_scoring_benchmark_smoke(tiny, tmp_path):
    """benchmarks/batch_scoring.py --smoke end to end (without Spark), so the benchmark never rots."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batch_scoring.py"), "--smoke", "--run-name",
                           "tiny", "--skip-spark", "--plain-loop-small", "--work-dir", str(tmp_path), "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, env=tiny["env"], cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((tmp_path / "batch_scoring.json").read_text())
    names = [r["name"] for r in data["results"]]
    assert names[0] == "plain loop" and len(names) == 4
    assert [r["rows"] for r in data["results"]] == [200, 600, 600, 600]  # --plain-loop-small: the loop on 200 rows
    assert (tmp_path / "plain.csv").read_text().count("\n") == 201
    assert all(r["rows_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["tool_rows_per_s"] for r in data["results"])
    assert {(m["name"], m["rows"]) for m in data["memory"]} >= {("predict.py, 1 worker", 200),
                                                                 ("predict.py, 1 worker", 600)}
    assert data["resume"]["killed_by_sigkill"] and data["resume"]["identical"]
    assert not data["resume"]["output_existed_before_completion"]
    assert set(data["targets"]) == {"speedup", "memory", "resume"}
    assert "## Targets" in (tmp_path / "batch_scoring.md").read_text()
