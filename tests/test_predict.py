"""predict.py on a tiny INT8 run, from the shell: CSV/JSONL/Parquet round trips, equality with
Predictor(per_text=True), rows without text, worker processes, kill and resume, one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, SMSA, record_as_current, run_step, run_steps, tiny_workspace, train_tiny

from common import PipelineError

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


@pytest.fixture(scope="module")
def big_input(tiny):
    """Rows enough for predict.py to be killed while it runs (hundreds of chunks of 10 rows), and its
    uninterrupted output, per format."""
    df = input_table(tiny["texts"], 3000)
    out = {"df": df, "csv": tiny["tmp"] / "big.csv", "parquet": tiny["tmp"] / "big.parquet"}
    df.to_csv(out["csv"], index=False)
    df.to_parquet(out["parquet"])
    return out


def start_predict(w, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--run-name", "tiny", "--no-progress",
                             *map(str, args)], env=w["env"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_when_recorded(w, output, *args, chunks=2, timeout=600) -> dict:
    """predict.py started for real, killed with SIGKILL from here once its progress file records `chunks`
    chunks; the progress it left."""
    progress = Path(f"{output}.progress.json")
    proc = start_predict(w, *args, "--output", output)
    deadline = time.monotonic() + timeout
    while not (progress.is_file() and json.loads(progress.read_text())["chunks_done"] >= chunks):
        assert proc.poll() is None, f"predict.py ended before it was killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "predict.py recorded no chunk in time"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "predict.py finished before the kill: give it more rows"
    return json.loads(progress.read_text())


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
    # a named input to stdout: the input's format, without --format
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run-name", "tiny", "--input",
                           str(csv_input["path"]), "--output", "-", "--prefix", "pred_", "--no-progress"],
                          capture_output=True, env=tiny["env"], cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == (tmp_path / "file.csv").read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_kill_and_resume_gives_the_same_output(tiny, big_input, tmp_path, fmt):
    """predict.py killed with a real SIGKILL while it scores: nothing under the final name; --resume cuts what a
    crash left after the last recorded chunk (here: half a chunk's bytes, or a part file), scores the rest only,
    and the file equals an uninterrupted run byte for byte."""
    args = ["--input", big_input[fmt], "--chunk-rows", 10, "--prefix", "pred_"]
    predict(tiny, *args, "--output", tmp_path / f"whole.{fmt}")
    out = tmp_path / f"out.{fmt}"
    progress = kill_when_recorded(tiny, out, *args)
    assert not out.exists()
    done = progress["chunks_done"]
    assert done >= 2 and progress["rows_done"] == 10 * done
    if fmt == "csv":  # what a crash while writing the next chunk leaves
        with open(tmp_path / "out.csv.partial", "ab") as f:
            f.write(b'999,"half a row')
    else:
        (tmp_path / "out.parquet.parts" / f"part-{done:06d}.parquet").write_bytes(b"PAR1 half a part")
    resumed = predict(tiny, *args, "--output", out, "--resume")
    assert out.read_bytes() == (tmp_path / f"whole.{fmt}").read_bytes()
    assert "scored 3000 rows" in resumed.stdout and "ok 2998, empty_text 2" in resumed.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.")) == [f"out.{fmt}"]


def test_resume_refuses_another_input(tiny, big_input, tmp_path):
    src = tmp_path / "in.csv"
    big_input["df"].to_csv(src, index=False)
    args = ["--input", src, "--chunk-rows", 10, "--prefix", "pred_"]
    kill_when_recorded(tiny, tmp_path / "out.csv", *args, chunks=1)
    big_input["df"].head(100).to_csv(src, index=False)  # the input changed since
    proc = predict(tiny, *args, "--output", tmp_path / "out.csv", "--resume", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "cannot resume" in proc.stderr and "another input" in proc.stderr
    assert (tmp_path / "out.csv.partial").exists() and not (tmp_path / "out.csv").exists()


def test_resume_refuses_an_input_changed_in_place(tiny, big_input, tmp_path):
    """One byte of an already scored row changed, the file's size and modification time kept: another input."""
    src = tmp_path / "in.csv"
    big_input["df"].to_csv(src, index=False)
    args = ["--input", src, "--chunk-rows", 10, "--prefix", "pred_"]
    kill_when_recorded(tiny, tmp_path / "out.csv", *args, chunks=1)
    st = src.stat()
    data = bytearray(src.read_bytes())
    at = data.index(b"\n000,") + 5  # the first row's text
    data[at + 1] = ord("X") if data[at + 1] != ord("X") else ord("Y")
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    proc = predict(tiny, *args, "--output", tmp_path / "out.csv", "--resume", check=False)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr and "another input" in proc.stderr, proc.stderr


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


def test_a_crash_while_finishing_parquet_never_empties_the_output(tiny, csv_input, tmp_path, monkeypatch):
    """The process dies right after removing the part files of a finished Parquet output: --resume must not
    rebuild the output from the parts left (none) and empty it."""
    import shutil

    import predict as predict_py

    src = tmp_path / "in.parquet"
    csv_input["df"].to_parquet(src)
    out = tmp_path / "out.parquet"
    args = ["--run-name", str(tiny["run"]), "--input", str(src), "--output", str(out), "--chunk-rows", "40",
            "--prefix", "pred_", "--no-progress", "--threads", "1"]
    real_rmtree = shutil.rmtree

    def rmtree_then_die(path, *a, **k):
        real_rmtree(path, *a, **k)
        if str(path).endswith(".parts") and not k.get("ignore_errors"):  # the finished output's parts
            raise Crash()

    monkeypatch.setattr(predict_py.shutil, "rmtree", rmtree_then_die)
    with pytest.raises(Crash):
        predict_py.main(args)
    monkeypatch.undo()
    finished = pq.read_table(out)
    assert finished.num_rows == 230
    predict_py.main(args + ["--resume"])
    assert pq.read_table(out).equals(finished)


BAD_CSV = {  # file content -> the one line predict.py must answer with
    "ragged first row": (b"id,text\n1,bagus,extra\n2,jelek\n", "in.csv line 2 has 3 fields but the header has 2"),
    "ragged later row": (b'id,text\n1,"bagus\nsekali"\n2,jelek,x\n', "in.csv line 4 has 3 fields"),
    "short row": (b"id,text\n1,bagus\n2\n", "in.csv line 3 has 1 field but the header has 2"),
    "repeated column": (b"text,text\nbagus,jelek\n", "names column(s) 'text' more than once"),
    "not utf-8": ("text\nbagus\nkopi di kaf\u00e9\n".encode("cp1252"), "(line 3, byte 0xe9): save it as UTF-8"),
}


@pytest.mark.parametrize("case, match", [
    ("missing file", "not found"),
    ("no text column", "has no column 'body'"),
    ("unknown extension", "unknown extension '.txt'"),
    ("unknown run", "no run 'nope'"),
    ("added column exists", "pass --prefix"),
    ("stdin to stdout without format", "needs --format"),
    ("folder", "is a folder"),
    *((case, match) for case, (_, match) in BAD_CSV.items()),
])
def test_bad_input_gets_one_line_error(tiny, csv_input, tmp_path, case, match):
    src, extra, run = str(csv_input["path"]), ["--prefix", "pred_"], "tiny"
    out = tmp_path / ("out.txt" if case == "unknown extension" else "out.csv")
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
    elif case == "stdin to stdout without format":
        src = out = "-"
    elif case == "folder":
        (tmp_path / "in").mkdir()
        src = str(tmp_path / "in")
    elif case in BAD_CSV:
        (tmp_path / "in.csv").write_bytes(BAD_CSV[case][0])
        src = str(tmp_path / "in.csv")
    proc = run_step("predict.py", "--run-name", run, "--input", src, "--output", out, "--no-progress", *extra,
                    env=tiny["env"], check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(tiny, csv_input, tmp_path, how):
    src = tmp_path / "in.csv"
    src.write_bytes(csv_input["path"].read_bytes())
    out = {"same path": tmp_path / "." / "in.csv", "symlink": tmp_path / "link.csv",
           "hard link": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    proc = predict(tiny, "--input", src, "--output", out, "--prefix", "pred_", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "is the input file" in proc.stderr
    assert src.read_bytes() == csv_input["path"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"in.csv", out.name})


def test_rows_the_model_cannot_take_get_a_status(tiny, tmp_path):
    """A text that is not valid Unicode (JSON's "\\ud800", a lone surrogate the tokenizer cannot take) gets
    invalid_text, a text over --max-chars gets too_long; the other rows are scored as usual."""
    texts = tiny["texts"][:6]
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    records[1]["text"] = "\ud800"
    records[3]["text"] = "bagus " * 60  # 360 characters
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))  # ensure_ascii: the surrogate as an escape
    proc = predict(tiny, "--input", src, "--output", tmp_path / "out.jsonl", "--max-chars", 300, "--prefix", "pred_",
                   "--chunk-rows", 4)
    out = pd.DataFrame([json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()],
                       dtype=object)  # object: an Arrow string column cannot hold the surrogate
    assert out["pred_status"].tolist() == ["ok", "invalid_text", "ok", "too_long", "ok", "ok"]
    assert out.loc[1, "pred_label"] is None and out.loc[3, "pred_label"] is None
    assert_scores_equal(out, [r["text"] for r in records], tiny["run"])
    assert "ok 4, too_long 1, invalid_text 1" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


@pytest.mark.skipif(not SMSA.is_dir(), reason="../shared/data/smsa not present (the benchmark scores its texts)")
def test_batch_scoring_benchmark_smoke(tiny, tmp_path):
    """benchmarks/batch_scoring.py --smoke end to end (without Spark), so the benchmark never rots."""
    proc = run_step("benchmarks/batch_scoring.py", "--smoke", "--run-name", "tiny", "--skip-spark", "--plain-loop-small",
                    "--work-dir", tmp_path, "--out-dir", tmp_path, env=tiny["env"], check=False, timeout=1800)
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


def reformatted_quant_config(run_dir):
    """quant_config.json rewritten with the same settings in other bytes (as a re-quantization would replace it)."""
    path = run_dir / "quant_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True) + "\n")


def test_a_run_read_before_its_quant_config_changed_is_refused(tiny, tmp_path):
    """A Run read, then quant_config.json replaced and the INT8 model re-made from it: the settings that Run would
    check the CPU against are not the model's, so Predictor refuses that Run (a fresh read serves)."""
    from predictor import Predictor
    from run import Run

    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny["run"], run_dir)
    stale = Run.load(run_dir)
    reformatted_quant_config(run_dir)
    record_as_current(run_dir)
    with pytest.raises(PipelineError, match="changed since this run was read"):
        Predictor(stale)
    assert Predictor(run_dir).predict("bagus")["label"] in tiny_labels(run_dir)


def tiny_labels(run_dir):
    return json.loads((run_dir / "run_info.json").read_text())["labels"]


def test_eager_evaluation_hashes_the_quant_config_it_simulates(tiny, tmp_path, monkeypatch):
    """quant_config.json replaced right after the run was read: the evaluation would record the new file's hash for
    the settings it read from the old one, so it refuses."""
    import eval_eager_qat
    from run import Run

    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny["run"], run_dir)

    def load_then_replace(args):
        run = Run.load(run_dir, tmp_path / "results")
        reformatted_quant_config(run_dir)
        return run

    monkeypatch.setattr(eval_eager_qat, "load_run", load_then_replace)
    monkeypatch.setattr(sys, "argv", ["eval_eager_qat.py", "--fake-quant", "--latency-samples", "0"])
    with pytest.raises(PipelineError, match="changed while this step read it"):
        eval_eager_qat.main()
    assert not (tmp_path / "results").exists()


def test_an_input_changed_while_scored_is_refused(tiny, csv_input, tmp_path, monkeypatch):
    """A byte of the input changed after its first chunk was read: the output would mix two versions of the file,
    so it is not finished, and --resume refuses the changed input."""
    import predict as predict_py

    src = tmp_path / "in.csv"
    shutil.copy(csv_input["path"], src)
    out = tmp_path / "out.csv"
    args = ["--run-name", str(tiny["run"]), "--input", str(src), "--output", str(out), "--chunk-rows", "40",
            "--prefix", "pred_", "--no-progress", "--threads", "1"]
    real_map = predict_py.LocalScorer.map

    def change_after_first_chunk(self, items):
        for i, result in enumerate(real_map(self, items)):
            if i == 0:
                data = src.read_bytes()
                src.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])  # same size, one byte
            yield result

    monkeypatch.setattr(predict_py.LocalScorer, "map", change_after_first_chunk)
    with pytest.raises(PipelineError, match="changed while it was scored"):
        predict_py.main(args)
    monkeypatch.undo()
    assert not out.exists()
    with pytest.raises(PipelineError, match="another input"):
        predict_py.main(args + ["--resume"])
    predict_py.main(args)  # started over: the file as it is now
    assert len(pd.read_csv(out)) == 230


def test_stdin_to_a_file(tiny, csv_input, tmp_path):
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run-name", str(tiny["run"]), "--input", "-",
                           "--output", str(out), "--format", "csv", "--prefix", "pred_", "--no-progress"],
                          stdin=open(csv_input["path"], "rb"), capture_output=True, text=True, env=tiny["env"])
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert len(pd.read_csv(out)) == 230
