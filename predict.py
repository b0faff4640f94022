"""Score every row of a CSV, JSONL or Parquet file with a run's INT8 model, in bounded memory.

    python predict.py --run-name minilm-qat-int8-smsa --input texts.csv --output scored.csv
    python predict.py --run-name RUN --input big.parquet --output scored.parquet --workers 2 --resume
    cat texts.jsonl | python predict.py --run-name RUN --input - --output - --format jsonl > scored.jsonl
    python predict.py --engine spark --run-name RUN --input texts.parquet --output scored.parquet   # a folder

The output has every input row, in input order, with all its columns, plus `status` (ok, empty_text,
missing_text, not_text, too_long, invalid_text), `label`, `score` and `prob_<label>` for each label of the run
(`--prefix` renames them). A row without a usable text gets its status and no label; the job goes on and prints
the counts. A CSV row with more or fewer fields than its header stops the job with the line to fix.

The input is read in chunks of --chunk-rows rows (CSV records, pyarrow iter_batches, JSON lines),
scored by --workers processes, and appended in order to `<output>.partial`; `<output>.progress.json` records
the chunks done, so `--resume` continues an interrupted run. The output appears under its name only complete.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import scoring
from common import (MODELS_DIR, PipelineError, _HelpFormatter, csv_records, main_guard, sha256_file, utf8_lines,
                    write_json)
from scoring import (FORMATS, MAX_CHARS, STATUSES, check_no_collision, check_not_same_file, count_statuses,
                     format_of, model_sha256, output_columns, score_texts)

BATCH_DEPENDENCE = ("ONNX Runtime's dynamic quantization scales activations per batch: with batches of 32, 1.6%% of "
                    "the labels of 100,000 SmSA texts differed from scoring each text alone (the default model, "
                    "2026-11-28; benchmarks/reports/batch_scoring_reading.md)")


def build_parser() -> argparse.ArgumentParser:
    # _HelpFormatter: each default stated once (not "(default: CPU count // workers) (default: None)")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--run-name", required=True, help=f"a run folder in {MODELS_DIR}, or the path of a run folder")
    p.add_argument("--input", required=True, help="CSV, JSONL or Parquet file (by extension); '-' for stdin")
    p.add_argument("--output", required=True,
                   help="file to write (format by extension); '-' for stdout; with --engine spark a folder")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())),
                   help="format of both input and output whatever their extensions (default: by extension; "
                        "'-' takes the format of the named file, stdin to stdout needs --format)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--prefix", default="", help="prefix of the added columns, e.g. pred_ when the input has 'label'")
    p.add_argument("--batch-size", type=int, default=1,
                   help="1: every text scored alone, deterministic per text, the same results as "
                        "Predictor(run, per_text=True) and serve.py. N > 1: batches of N texts sorted by length "
                        "within each chunk, faster where batching pays, but " + BATCH_DEPENDENCE)
    p.add_argument("--max-chars", type=int, default=MAX_CHARS,
                   help="a longer text is not scored: its row gets status too_long and no label (serve.py "
                        "refuses it likewise)")
    p.add_argument("--workers", type=int, default=1, help="scoring processes, each with its own model")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per worker (default: "
                                                             "CPU count // workers)")
    p.add_argument("--chunk-rows", type=int, default=1000, help="rows read, scored and written at a time")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed chunk (same input, model, settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="spark: score with Spark (mapInPandas); see README_DEPLOYMENT.md")
    p.add_argument("--spark-master", default=None,
                   help="Spark master URL (default: the one spark-submit sets, else local[*])")
    p.add_argument("--spark-run-path", default=None,
                   help="where Spark workers find the run folder (a shared path, or the folder an --archives "
                        "run.zip#run unpacks); default: the run folder on a local master, else it is zipped and "
                        "shipped with the job")
    p.add_argument("--spark-ship-run", action="store_true",
                   help="ship the zipped run folder with the job even on a local master")
    p.add_argument("--spark-partitions", type=int, default=None,
                   help="partitions to score (default: 4 per core Spark offers)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("batch_size", "workers", "chunk_rows", "max_chars"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def resolve_run(name: str) -> Path:
    rdir = MODELS_DIR / name
    if not rdir.is_dir() and Path(name).is_dir():
        rdir = Path(name)
    if not rdir.is_dir():
        raise PipelineError(f"no run {name!r} in {MODELS_DIR}: pass the --run-name of a trained, exported and "
                            f"quantized run (train_eager_qat.py, export_to_onnx.py, quantize_onnx_dynamic.py)")
    return rdir


def check_input_file(path: str) -> None:
    if path != "-" and Path(path).is_dir():
        raise PipelineError(f"{path} is a folder: pass one CSV, JSONL or Parquet file (--engine spark reads a "
                            f"folder of part files)")
    if path != "-" and not Path(path).is_file():
        raise PipelineError(f"input file {path} not found")


# ------------------------------------------------------------------ reading: chunks of rows


def count_lines(path: str) -> int:
    """Newlines in a file (a cheap row count for the progress bar; texts with line breaks make it an estimate)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


class CsvFormat:
    """common.csv_records in chunks of pandas DataFrames, every column as text exactly as written (no type or NA
    conversion); a ragged row or a repeated column name stops the job with its line."""
    name, null_is_empty = "csv", True  # a CSV has no null: an empty field is an empty text

    def __init__(self, src, chunk_rows: int):
        self.src, self.chunk_rows = src, chunk_rows
        self.f = sys.stdin.buffer if src == "-" else open(src, "rb")
        self.header, self.rows = csv_records(self.f, "stdin" if src == "-" else src)
        if self.header is None:
            raise PipelineError(f"{src}: empty CSV: it needs a header line")

    def total_rows(self):
        return None if self.src == "-" else max(count_lines(self.src) - 1, 0)

    def chunks(self):
        import pandas as pd

        n = 0
        while True:
            rows = [row for _, row in itertools.islice(self.rows, self.chunk_rows)]
            if not rows and n:
                return
            yield pd.DataFrame(rows, columns=self.header, dtype=str)  # a header-only file: one empty chunk
            n += 1

    def columns(self, chunk=None):
        return list(self.header)

    @staticmethod
    def texts(chunk, column):
        return chunk[column].tolist() if column in chunk.columns else [None] * len(chunk)

    @staticmethod
    def encode(chunk, cols, first: bool) -> bytes:
        return chunk.assign(**cols).to_csv(index=False, header=first, lineterminator="\n").encode()


class JsonlFormat:
    """One JSON object per line, read line by line; each record is written back as it was, plus the added keys
    (pandas' read_json would turn missing keys into nulls and large integers into floats)."""
    name, null_is_empty = "jsonl", False

    def __init__(self, src, chunk_rows: int):
        self.src, self.chunk_rows = src, chunk_rows

    def total_rows(self):
        return None if self.src == "-" else count_lines(self.src)

    def chunks(self):
        f = sys.stdin.buffer if self.src == "-" else open(self.src, "rb")
        try:
            chunk = []
            for lineno, line in enumerate(utf8_lines(f, "stdin" if self.src == "-" else self.src), 1):
                if not line.strip():
                    continue
                chunk.append(self.parse(line, lineno))
                if len(chunk) == self.chunk_rows:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            if f is not sys.stdin.buffer:
                f.close()

    def parse(self, line: str, lineno: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{self.src} line {lineno} is not JSON ({e}): JSONL needs one JSON object per line")
        if not isinstance(record, dict):
            raise PipelineError(f"{self.src} line {lineno} is a JSON {type(record).__name__}, not an object")
        return record

    @staticmethod
    def columns(chunk):
        return list(dict.fromkeys(k for record in chunk for k in record))

    @staticmethod
    def texts(chunk, column):
        return [record.get(column) for record in chunk]

    @staticmethod
    def encode(chunk, cols, first: bool) -> bytes:
        names = list(cols)
        records = ({**record, **{n: cols[n][i] for n in names}} for i, record in enumerate(chunk))
        return b"".join(JsonlFormat.line(record) for record in records)

    @staticmethod
    def line(record: dict) -> bytes:
        try:
            return (json.dumps(record, ensure_ascii=False) + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate (invalid_text) has no UTF-8: written back as its escape
            return (json.dumps(record) + "\n").encode()


class ParquetFormat:
    """pyarrow iter_batches (memory bounded by one row group of the input); Arrow types kept as they are."""
    name, null_is_empty = "parquet", False

    def __init__(self, src, chunk_rows: int):
        import pyarrow.parquet as pq

        self.src, self.chunk_rows, self.spool = src, chunk_rows, None
        if src == "-":  # Parquet needs random access (its footer comes last): spool stdin to a temporary file
            self.spool = tempfile.TemporaryFile()
            shutil.copyfileobj(sys.stdin.buffer, self.spool)
            self.spool.seek(0)
        try:
            self.file = pq.ParquetFile(self.spool or src)
        except Exception as e:
            raise PipelineError(f"{src} could not be read as Parquet: {str(e).splitlines()[0][:200]}")
        self.schema = self.file.schema_arrow

    def total_rows(self):
        return self.file.metadata.num_rows

    def chunks(self):
        yield from self.file.iter_batches(batch_size=self.chunk_rows)

    def columns(self, chunk=None):
        return list(self.schema.names)

    def check_text_type(self, column: str) -> None:
        import pyarrow as pa

        t = self.schema.field(column).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
                or pa.types.is_null(t)):
            raise PipelineError(f"{self.src}: column {column!r} has type {t}, not text: pass the --text-column "
                                f"that holds the texts")

    @staticmethod
    def texts(chunk, column):
        return chunk.column(chunk.schema.get_field_index(column)).to_pylist()

    def output_schema(self, labels, prefix: str):
        import pyarrow as pa

        added = [pa.field(n, pa.string()) for n in output_columns(labels, prefix)[:2]]
        added += [pa.field(n, pa.float64()) for n in output_columns(labels, prefix)[2:]]
        return pa.schema(list(self.schema) + added, metadata=self.schema.metadata)

    @staticmethod
    def encode(chunk, cols, schema):
        import pyarrow as pa

        arrays = list(chunk.columns) + [pa.array(v, type=schema.field(n).type) for n, v in cols.items()]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def open_input(path: str, fmt: str, chunk_rows: int):
    return {"csv": CsvFormat, "jsonl": JsonlFormat, "parquet": ParquetFormat}[fmt](path, chunk_rows)


# ------------------------------------------------------------------ writing: partial output, progress, resume


class TextSink:
    """CSV/JSONL bytes appended to `<output>.partial`; the byte size after each chunk is recorded, so a resume
    cuts off whatever a crash left after the last recorded chunk."""

    schema = None

    def __init__(self, output: Path, offset: int | None):
        self.output, self.partial = output, Path(f"{output}.partial")
        if offset is None:
            self.f = open(self.partial, "wb")
        else:
            self.f = open(self.partial, "r+b")
            self.f.truncate(offset)
            self.f.seek(offset)

    def write(self, index: int, data: bytes) -> None:
        self.f.write(data)
        self.f.flush()
        os.fsync(self.f.fileno())

    def position(self) -> int:
        return self.f.tell()

    def finish(self) -> None:
        self.f.close()
        os.replace(self.partial, self.output)

    def cleanup(self) -> None:
        pass

    def close(self) -> None:
        self.f.close()


class ParquetPartsSink:
    """A Parquet file cannot be appended to: each chunk is written as `<output>.parts/part-NNNNNN.parquet`, and
    at the end the parts are copied, in order, into one file with row groups of at most row_group_rows rows."""

    def __init__(self, output: Path, schema, done_chunks: int | None, row_group_rows: int = 65536):
        self.output, self.schema, self.row_group_rows = output, schema, row_group_rows
        self.parts = Path(f"{output}.parts")
        if done_chunks is None:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(exist_ok=True)
        for part in self.parts.iterdir():  # a crash may have left parts of chunks that were not recorded
            if not part.name.startswith("part-") or int(part.stem.split("-")[1]) >= (done_chunks or 0):
                part.unlink()

    def write(self, index: int, batch) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = self.parts / f"part-{index:06d}.parquet"
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(pa.Table.from_batches([batch], schema=self.schema), tmp)
        os.replace(tmp, part)

    def position(self) -> int:
        return 0

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        partial = Path(f"{self.output}.partial")
        with pq.ParquetWriter(partial, self.schema) as writer:
            buffer, rows = [], 0
            for part in sorted(self.parts.glob("part-*.parquet")):
                for batch in pq.ParquetFile(part).iter_batches():
                    buffer.append(batch)
                    rows += batch.num_rows
                    if rows >= self.row_group_rows:
                        writer.write_table(pa.Table.from_batches(buffer, schema=self.schema))
                        buffer, rows = [], 0
            if buffer:
                writer.write_table(pa.Table.from_batches(buffer, schema=self.schema))
        os.replace(partial, self.output)

    def cleanup(self) -> None:
        """Called once the progress file is gone: with it still there, a resume after a crash here would rebuild
        the output from the parts left (none) and empty the finished file."""
        shutil.rmtree(self.parts)

    def close(self) -> None:
        pass


class StdoutSink:
    """Straight to stdout: no resume."""

    def __init__(self, schema=None):
        self.schema, self.writer = schema, None
        if schema is not None:
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(sys.stdout.buffer, schema)

    def write(self, index: int, data) -> None:
        if self.writer is not None:
            self.writer.write_batch(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def position(self) -> int:
        return 0

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
        sys.stdout.buffer.flush()

    def cleanup(self) -> None:
        pass

    def close(self) -> None:
        pass


def input_identity(path: str) -> dict:
    """The input by content (a byte changed in place, size and time kept, is another input): one read of the file,
    small beside scoring it. Taken before the input is opened and again before the output is finished, so it is the
    hash of what was read. Standard input has none (it cannot be resumed)."""
    return {"stdin": True} if path == "-" else {"size": os.stat(path).st_size, "sha256": sha256_file(path)}


def side_files(output: Path) -> list[Path]:
    return [Path(f"{output}{s}") for s in (".partial", ".progress.json", ".parts")]


def load_resume_state(output: Path, identity: dict, resume: bool) -> dict | None:
    """The recorded progress of an interrupted run on this output with this identity, or None to start over."""
    progress = Path(f"{output}.progress.json")
    if not resume:
        if progress.exists():
            print(f"note: discarding the unfinished run in {output}.partial (pass --resume to continue it)",
                  file=sys.stderr)
        for path in side_files(output):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return None
    if not progress.is_file():
        print(f"note: no interrupted run to resume for {output}: starting from the beginning", file=sys.stderr)
        return None
    state = json.loads(progress.read_text())
    before = state["identity"]
    differ = [k for k in identity if before.get(k) != identity[k]]
    if differ:
        was = "; ".join(f"{k} was {before.get(k)}" for k in differ)
        raise PipelineError(f"cannot resume {output}: its unfinished run had another {' and '.join(differ)} "
                            f"({was}): run without --resume to start over")
    if state["format"] != "parquet" and not Path(f"{output}.partial").is_file():
        raise PipelineError(f"cannot resume {output}: {output}.partial is missing; run without --resume")
    return state


# ------------------------------------------------------------------ scoring: one process or a pool


class LocalScorer:
    def __init__(self, predictor, prefix, null_is_empty, max_chars):
        self.predictor, self.prefix, self.null_is_empty, self.max_chars = predictor, prefix, null_is_empty, max_chars

    def map(self, items):
        """(key, texts) -> (key, columns), in order."""
        for key, texts in items:
            yield key, score_texts(self.predictor, texts, self.prefix, self.null_is_empty, self.max_chars)

    def close(self):
        pass


class PoolScorer:
    """N processes (spawned: no ONNX Runtime or tokenizer state is forked), each with its own Predictor and
    `threads` threads; at most 2N chunks in flight, so memory stays bounded; results come back in input order."""

    def __init__(self, run_dir, workers, threads, batch_size, prefix, null_is_empty, max_chars):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers, self.prefix, self.null_is_empty, self.max_chars = workers, prefix, null_is_empty, max_chars
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=scoring.init_worker, initargs=(str(run_dir), threads, batch_size))

    def map(self, items):
        from concurrent.futures.process import BrokenProcessPool

        pending = deque()
        try:
            for key, texts in items:
                pending.append((key, self.pool.submit(scoring.score_in_worker, texts, self.prefix,
                                                      self.null_is_empty, self.max_chars)))
                while len(pending) >= 2 * self.workers:
                    key0, fut = pending.popleft()
                    yield key0, fut.result()
            while pending:
                key0, fut = pending.popleft()
                yield key0, fut.result()
        except BrokenProcessPool:
            raise PipelineError("a scoring worker process died (out of memory?): lower --workers or "
                                "--chunk-rows, then rerun with --resume")

    def close(self):
        self.pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------ the local engine


def progress_bar(total, initial, disable):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rows", unit_scale=True, smoothing=0.1, mininterval=1.0,
                disable=disable, file=sys.stderr, dynamic_ncols=True)


def check_formats(args) -> str:
    """The format of input and output; '-' takes the named file's format unless --format says."""
    check_input_file(args.input)
    if args.format or "-" not in (args.input, args.output) or args.input == args.output:
        in_fmt, out_fmt = format_of(args.input, args.format), format_of(args.output, args.format)
    else:
        in_fmt = out_fmt = format_of(args.output if args.input == "-" else args.input, None)
    if in_fmt != out_fmt:
        raise PipelineError(f"the output is written in the input's format ({in_fmt}): name it *.{in_fmt} "
                            f"(or '-')")
    if args.resume and "-" in (args.input, args.output):
        raise PipelineError("--resume needs a named input and output file, not '-'")
    check_not_same_file(args.input, args.output)
    return in_fmt


def check_columns(reader, first, args, labels) -> None:
    """The text column is there (checked on the first chunk of a JSONL file), once, and no added column is."""
    if first is None and reader.name == "jsonl":
        return  # an empty JSONL file: nothing to check, nothing to score
    columns = reader.columns(first)
    twice = sorted({str(c) for c in columns if columns.count(c) > 1})
    if twice:  # CSV headers are checked as read (common.csv_records); a Parquet schema may repeat a name too
        raise PipelineError(f"{args.input} has more than one column named {', '.join(map(repr, twice))}: give every "
                            f"column its own name")
    if args.text_column not in columns:
        raise PipelineError(f"{args.input} has no column {args.text_column!r} (found: {', '.join(map(str, columns))})"
                            f": pass --text-column")
    if reader.name == "parquet":
        reader.check_text_type(args.text_column)
    check_no_collision(columns, labels, args.prefix)


def open_output(args, rdir: Path, fmt: str, schema, input_id: dict):
    """The sink to write to and the recorded state of the run to resume (None: start at the first chunk)."""
    if args.output == "-":
        return StdoutSink(schema), None, None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("text_column", "prefix", "batch_size", "chunk_rows", "max_chars")}
    identity = {"input": input_id, "model_sha256": model_sha256(rdir),
                "settings": {**settings, "format": fmt}}
    state = load_resume_state(output, identity, args.resume)
    if fmt == "parquet":
        sink = ParquetPartsSink(output, schema, state["chunks_done"] if state else None)
    else:
        sink = TextSink(output, state["output_bytes"] if state else None)
    return sink, state or {"identity": identity, "format": fmt, "chunks_done": 0, "rows_done": 0,
                           "output_bytes": 0, "counts": dict.fromkeys(STATUSES, 0)}, output


def run_local(args, rdir: Path) -> dict:
    from predictor import Predictor

    fmt = check_formats(args)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    predictor = Predictor(rdir, threads=threads, batch_size=args.batch_size, per_text=args.batch_size == 1)
    labels = list(predictor.labels)
    input_id = input_identity(args.input) if args.output != "-" else None  # before the first byte is read
    reader = open_input(args.input, fmt, args.chunk_rows)
    chunks = iter(reader.chunks())
    first = next(chunks, None)
    check_columns(reader, first, args, labels)
    schema = reader.output_schema(labels, args.prefix) if fmt == "parquet" else None
    sink, state, output = open_output(args, rdir, fmt, schema, input_id)
    if args.workers == 1:
        scorer = LocalScorer(predictor, args.prefix, reader.null_is_empty, args.max_chars)
    else:
        del predictor  # it checked the run; each worker loads its own
        scorer = PoolScorer(rdir, args.workers, threads, args.batch_size, args.prefix, reader.null_is_empty,
                            args.max_chars)
    try:
        return score_chunks(args, reader, [first] if first is not None else [], chunks, scorer, sink, state,
                            output, labels)
    except BaseException:
        if output is not None and not Path(f"{output}.progress.json").exists():
            sink.close()  # nothing recorded, nothing to resume: leave no empty side files behind
            for path in side_files(output):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    finally:
        scorer.close()
        sink.close()


def score_chunks(args, reader, head, chunks, scorer, sink, state, output, labels) -> dict:
    """Score the chunks not yet done, write them in order, record the progress after each; then finish."""
    state = state or {"chunks_done": 0, "rows_done": 0, "counts": dict.fromkeys(STATUSES, 0)}
    for s in STATUSES:  # a run recorded before a status existed
        state["counts"].setdefault(s, 0)
    done, status = state["chunks_done"], f"{args.prefix}status"

    def pending():
        for i, chunk in enumerate(itertools.chain(head, chunks)):
            if i >= done:  # the chunks a resumed run already wrote are read and skipped
                yield (i, chunk), reader.texts(chunk, args.text_column)

    bar = progress_bar(reader.total_rows(), state["rows_done"], args.no_progress)
    start, scored = time.perf_counter(), 0
    try:
        for (i, chunk), cols in scorer.map(pending()):
            if reader.name == "jsonl" and i > 0:  # JSON records may bring new keys in any chunk
                check_no_collision(reader.columns(chunk), labels, args.prefix)
            sink.write(i, reader.encode(chunk, cols, sink.schema if reader.name == "parquet" else i == 0))
            for s, n in count_statuses(cols[status]).items():
                state["counts"][s] += n
            state.update(chunks_done=i + 1, rows_done=state["rows_done"] + len(cols[status]),
                         output_bytes=sink.position())
            if output is not None:
                write_json(Path(f"{output}.progress.json"), state)
            scored += len(cols[status])
            bar.update(len(cols[status]))
        if output is not None and input_identity(args.input) != state["identity"]["input"]:
            raise PipelineError(f"{args.input} changed while it was scored (its rows would mix two versions): "
                                f"run again without --resume")
        sink.finish()
    finally:
        bar.close()
    if output is not None:  # the output is complete: first forget the progress, then the leftovers (crash-safe)
        Path(f"{output}.progress.json").unlink(missing_ok=True)
    sink.cleanup()
    elapsed = time.perf_counter() - start
    return {"rows": state["rows_done"], "counts": state["counts"], "seconds": elapsed,
            "rows_per_s": scored / elapsed if elapsed > 0 else 0.0}


def print_summary(summary: dict, output: str) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v or k == "ok")
    where = "stdout" if output == "-" else output
    print(f"scored {summary['rows']} rows into {where} ({counts}) in {summary['seconds']:.1f} s, "
          f"{summary['rows_per_s']:.1f} rows/s", file=sys.stderr if output == "-" else sys.stdout)


def main(argv=None):
    args = parse_args(argv)
    rdir = resolve_run(args.run_name)
    if args.engine == "spark":
        import spark_scoring

        summary = spark_scoring.run_cli(args, rdir)
    else:
        summary = run_local(args, rdir)
    print_summary(summary, args.output)


if __name__ == "__main__":
    main_guard(main)
