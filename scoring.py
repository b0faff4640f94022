"""Scoring rows of a table with a run's model: shared by predict.py (local processes) and spark_scoring.py (Spark
workers). A row whose text is missing or empty gets a status instead of a label, so one bad row never stops a job.

The output columns added to every row (after an optional prefix):
    status                  ok | empty_text | missing_text | not_text | too_long (over max_chars characters,
                            as serve.py refuses it) | invalid_text (not valid Unicode: a lone surrogate such as
                            JSON's "\\ud800", which the tokenizer cannot take)
    label, score            the predicted label and its probability (empty unless status is ok)
    prob_<label>            one probability per label of the run
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

from common import INT8_FILE, PipelineError, sha256_file

OK, EMPTY, MISSING, NOT_TEXT, TOO_LONG, INVALID = ("ok", "empty_text", "missing_text", "not_text", "too_long",
                                                   "invalid_text")
STATUSES = (OK, EMPTY, MISSING, NOT_TEXT, TOO_LONG, INVALID)
MAX_CHARS = 2000  # characters per text, as serve.py's --max-chars: beyond, tokenizing costs time for nothing
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

# One Predictor per (run, model file content, threads, batch size) and process: a worker process (predict.py
# --workers, or a Spark Python worker, which Spark reuses across tasks) loads the model once and keeps it, until the
# run's model file changes (a re-quantized run in the same folder gets a new Predictor, not the old model).
_PREDICTORS: dict = {}
_WORKER = None  # the Predictor of a predict.py worker process


def cached_predictor(run_dir, threads: int, batch_size: int, expected_sha256: str | None = None):
    """The process's Predictor of the run's current model; expected_sha256 (the model the driver verified): refuse
    any other model with one line."""
    from predictor import Predictor

    path = str(Path(run_dir).resolve())
    sha = model_sha256(run_dir)
    if expected_sha256 is not None and sha != expected_sha256:
        raise PipelineError(f"{Path(run_dir) / INT8_FILE} on this worker has sha256 {sha[:12]}..., not the model the "
                            f"driver verified ({expected_sha256[:12]}...): give the workers the same run folder "
                            f"(--spark-run-path, or --spark-ship-run)")
    key = (path, sha, int(threads), int(batch_size))
    if key not in _PREDICTORS:
        for old in [k for k in _PREDICTORS if k[0] == path and k[1] != sha]:
            del _PREDICTORS[old]  # the run's earlier model: never used again
        predictor = Predictor(run_dir, threads=threads, batch_size=batch_size, per_text=batch_size == 1)
        if predictor.lineage[INT8_FILE] != sha:  # replaced between the hash above and the Predictor's own
            raise PipelineError(f"{Path(run_dir) / INT8_FILE} changed while this worker loaded it: run the job again")
        _PREDICTORS[key] = predictor
    return _PREDICTORS[key]


def output_columns(labels, prefix: str = "") -> list[str]:
    return [f"{prefix}status", f"{prefix}label", f"{prefix}score"] + [f"{prefix}prob_{l}" for l in labels]


def check_no_collision(input_columns, labels, prefix: str) -> None:
    clash = [c for c in output_columns(labels, prefix) if c in set(input_columns)]
    if clash:
        raise PipelineError(f"the input already has column(s) {', '.join(map(repr, clash))} that the output adds: "
                            f"pass --prefix pred_ (or another prefix) to name the added columns apart")


def format_of(path: str, given: str | None) -> str:
    """csv, jsonl or parquet: --format for stdin/stdout ('-'), else the file's extension."""
    if path == "-" or given:
        if not given:
            raise PipelineError("reading stdin and writing stdout ('-') needs --format csv|jsonl|parquet")
        return given
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None and Path(path).is_dir():
        raise PipelineError(f"{path} is a folder whose name has no format extension: pass --format "
                            f"csv|jsonl|parquet")
    if fmt is None:
        raise PipelineError(f"{path}: unknown extension {Path(path).suffix or '(none)'!r}: use "
                            f"{', '.join(FORMATS)} (JSONL: one JSON object per line), or pass --format")
    return fmt


def check_not_same_file(input_path: str, output_path: str) -> None:
    """The output must not replace the input (the same path, or the same file through a link)."""
    if "-" in (input_path, output_path):
        return
    src, dst = Path(input_path), Path(output_path)
    same = src.resolve() == dst.resolve()
    if not same and src.exists() and dst.exists():
        same = os.path.samefile(src, dst)
    if same:
        raise PipelineError(f"--output {output_path} is the input file: the scores would replace the input; "
                            f"name another output file")


def is_unicode(text: str) -> bool:
    """False for a str the tokenizer cannot take (it must encode as UTF-8: a lone surrogate cannot)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def text_status(value, null_is_empty: bool = False, max_chars: int = MAX_CHARS) -> str:
    """The status of one cell of the text column. CSV has no null: there an empty field is empty_text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return EMPTY if null_is_empty else MISSING
    if not isinstance(value, str):
        return NOT_TEXT
    if not value.strip():  # strip stops at the first character that is not a space, however long the text
        return EMPTY
    if len(value) > max_chars:  # before anything that reads the whole text
        return TOO_LONG
    return OK if is_unicode(value) else INVALID


def score_texts(predictor, texts, prefix: str = "", null_is_empty: bool = False,
                max_chars: int = MAX_CHARS) -> dict[str, list]:
    """Columns (name -> list, one item per text) for a chunk of texts: status, label, score, prob_<label>.
    The values are those of predictor.predict() for the texts with status ok; None for the others."""
    texts = list(texts)
    status = [text_status(t, null_is_empty, max_chars) for t in texts]
    ok = [i for i, s in enumerate(status) if s == OK]
    preds = predictor.predict([texts[i] for i in ok])
    labels = list(predictor.labels)
    cols = {name: [None] * len(texts) for name in output_columns(labels, prefix)}
    cols[f"{prefix}status"] = status
    for i, p in zip(ok, preds):
        cols[f"{prefix}label"][i] = p["label"]
        cols[f"{prefix}score"][i] = p["score"]
        for label in labels:
            cols[f"{prefix}prob_{label}"][i] = p["probabilities"][label]
    return cols


def count_statuses(status_column) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for s in status_column:
        counts[s] += 1
    return counts



def model_sha256(run_dir, model_file: str = INT8_FILE) -> str:
    return sha256_file(Path(run_dir) / model_file)


# ------------------------------------------------------------------ worker processes (predict.py --workers)


def init_worker(run_dir: str, threads: int, batch_size: int) -> None:
    global _WORKER
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _WORKER = cached_predictor(run_dir, threads, batch_size)


def exit_with_parent(parent_pid: int) -> None:
    """A worker whose predict.py was killed (SIGKILL, out of memory) would otherwise wait for work forever."""
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


def score_in_worker(texts, prefix: str, null_is_empty: bool, max_chars: int = MAX_CHARS) -> dict[str, list]:
    return score_texts(_WORKER, texts, prefix, null_is_empty, max_chars)
