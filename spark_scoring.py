"""Score a text column of a Spark DataFrame with a run's INT8 model, on a laptop (local[*]) or a cluster.

    from spark_scoring import score_dataframe
    scored = score_dataframe(df, "models/minilm-qat-int8-smsa", text_column="text")

Each row gets the columns of scoring.py (status, label, score, prob_<label>), computed by the same code as
predict.py: `mapInPandas` hands Arrow batches of rows to Python workers, and every Python worker loads the run's
Predictor once (scoring.cached_predictor, keyed by the model file's sha256) and keeps it for all its tasks (Spark
reuses Python workers). The driver verifies the run and hands its model's sha256 to the workers: a worker whose
copy of the run holds another model (re-quantized meanwhile, or a stale shared copy) refuses it with one line.

Where the workers find the run: the run folder itself when the master is local; else the folder is zipped
(without the training checkpoint and the FP32 model) and shipped with the job (SparkContext.addFile), unless
`worker_run_path` names a copy that every worker can read (a shared file system, or the folder that
`spark-submit --archives run.zip#run` unpacks). The project's modules are shipped too (addPyFile).

`predict.py --engine spark` (run_cli below) reads a CSV, JSONL or Parquet file, keeps its row order, scores it
and writes Spark's usual output folder (part files, in input order).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common import ROOT, STATE_DICT_FILE, ONNX_FILE, PipelineError, load_run_labels
from scoring import (FORMATS, MAX_CHARS, STATUSES, cached_predictor, check_no_collision, check_not_same_file,
                     format_of, model_sha256, output_columns, score_texts)

ROW_ID = "__qat_row_id__"
NOT_SHIPPED = {STATE_DICT_FILE, ONNX_FILE}  # training checkpoint and FP32 model: not needed to predict
_SHIPPED: dict = {}  # per SparkContext (its applicationId: an id() may be reused by the next one): what was added


def spark_session(master: str | None = None, app_name: str = "qat-int8-predict", conf: dict | None = None):
    """A SparkSession: on `master`, else on the master spark-submit configured, else on local[*]."""
    from pyspark.sql import SparkSession

    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master is None and not launched_by_submit:
        master = "local[*]"
    if master and master.startswith("local"):
        # local Python workers must use this interpreter (the one with onnxruntime and transformers)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).config("spark.ui.showConsoleProgress", "false")
    if master:
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def added_fields(labels, prefix: str = ""):
    from pyspark.sql.types import DoubleType, StringType, StructField

    names = output_columns(labels, prefix)
    return ([StructField(n, StringType(), True) for n in names[:2]]
            + [StructField(n, DoubleType(), True) for n in names[2:]])


def score_dataframe(df, run_dir, text_column: str = "text", *, prefix: str = "", batch_size: int = 1,
                    threads: int = 1, worker_run_path: str | None = None, ship: bool | None = None,
                    null_is_empty: bool = False, max_chars: int = MAX_CHARS):
    """df with the columns of scoring.py added (status, label, score, prob_<label>), computed lazily.

    batch_size 1 (default): every text scored alone, as Predictor(run, per_text=True); N > 1 batches the texts
    of each Arrow batch (benchmarks/reports/batch_dependence.md: a few labels change). threads: ONNX Runtime
    threads per Python worker (one per task core). ship: zip the run folder into the job (default: when the
    master is not local and no worker_run_path is given). null_is_empty: a null text is empty_text (CSV input).
    max_chars: a longer text gets status too_long, as in predict.py."""
    from pyspark.sql.types import StructType

    from predictor import Predictor

    run_dir = Path(run_dir).resolve()
    Predictor(run_dir, threads=1)  # checks the run here, on the driver, with a one-line error
    verified_sha256 = model_sha256(run_dir)  # the workers must score with this model, none other
    labels = load_run_labels(run_dir)
    types = dict(df.dtypes)
    if text_column not in types:
        raise PipelineError(f"the DataFrame has no column {text_column!r} (found: {', '.join(df.columns)}): "
                            f"pass --text-column")
    if types[text_column] != "string":
        raise PipelineError(f"column {text_column!r} has type {types[text_column]}, not string")
    check_no_collision(df.columns, labels, prefix)
    spark = df.sparkSession
    sc = spark.sparkContext
    ship_modules(sc)
    if ship is None:
        ship = worker_run_path is None and not sc.master.startswith("local")
    if ship:
        run_ref = ("zip", ship_run(sc, run_dir))
    else:
        run_ref = ("path", worker_run_path or str(run_dir))
    schema = StructType(list(df.schema.fields) + added_fields(labels, prefix))
    fn = functools.partial(score_batches, run_ref, verified_sha256, threads, batch_size, text_column, prefix,
                           null_is_empty, max_chars)
    return df.mapInPandas(fn, schema)


def score_batches(run_ref, verified_sha256, threads, batch_size, text_column, prefix, null_is_empty, max_chars,
                  batches):
    """mapInPandas function, run by the Python workers: pandas batches in, the same rows with the scores out."""
    predictor = cached_predictor(worker_run_dir(run_ref), threads, batch_size, expected_sha256=verified_sha256)
    for pdf in batches:
        cols = score_texts(predictor, pdf[text_column].tolist(), prefix, null_is_empty, max_chars)
        yield pdf.assign(**cols)


# ------------------------------------------------------------------ shipping code and run to the workers


def ship_modules(sc) -> None:
    """The project's modules (this folder's *.py) as one zip on the workers' sys.path, once per SparkContext."""
    key = (sc.applicationId, "modules")
    if key in _SHIPPED:
        return
    tmp = Path(tempfile.mkdtemp(prefix="qat-spark-"))
    path = tmp / "qat_pipeline_modules.zip"
    with zipfile.ZipFile(path, "w") as z:
        for module in sorted(ROOT.glob("*.py")):
            z.write(module, module.name)
    sc.addPyFile(str(path))
    _SHIPPED[key] = path


def ship_run(sc, run_dir: Path) -> str:
    """Zip the files needed to predict (not model_qat.pth nor the FP32 ONNX) and add the zip to the job; its
    name carries the model's hash, so two versions of a run never meet in a worker's cache."""
    name = f"run-{run_dir.name}-{model_sha256(run_dir)[:12]}.zip"
    key = (sc.applicationId, name)
    if key not in _SHIPPED:
        path = Path(tempfile.mkdtemp(prefix="qat-spark-")) / name
        with zipfile.ZipFile(path, "w") as z:
            for f in sorted(run_dir.iterdir()):
                if f.is_file() and f.name not in NOT_SHIPPED:
                    z.write(f, f.name)
        sc.addFile(str(path))
        _SHIPPED[key] = path
    return name


def worker_run_dir(run_ref) -> str:
    """On a worker: the run folder: a path, or the shipped zip unpacked once beside it (by the first Python
    worker of the node to get there; the others use that copy)."""
    kind, value = run_ref
    if kind == "path":
        return value
    from pyspark import SparkFiles

    zip_path = Path(SparkFiles.get(value))
    target = zip_path.with_suffix("")
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".unzip-", dir=zip_path.parent))
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another Python worker unpacked it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# ------------------------------------------------------------------ predict.py --engine spark


def read_input(spark, path: str, fmt: str):
    """Spark's readers; CSV as text columns (no type inference), parsed as pandas does (RFC 4180 quotes,
    line breaks inside quoted fields); a malformed row fails the job instead of becoming nulls."""
    reader = spark.read.option("mode", "FAILFAST")
    if fmt == "csv":
        return reader.options(header=True, multiLine=True, escape='"', inferSchema=False).csv(path)
    if fmt == "jsonl":
        return reader.json(path)
    return reader.parquet(path)


def in_input_order(df, partitions: int):
    """Rows spread over `partitions` contiguous ranges of the input, each range in input order: scoring runs in
    parallel and the part files of the output, read in name order, give the rows in input order. (A file scan
    numbers rows in file order, so the row id is increasing in input order for one input file.)"""
    from pyspark.sql import functions as F

    return (df.withColumn(ROW_ID, F.monotonically_increasing_id())
            .repartitionByRange(partitions, ROW_ID).sortWithinPartitions(ROW_ID))


def write_output(df, path: str, fmt: str) -> None:
    writer = df.write.mode("overwrite")
    if fmt == "csv":  # Spark's CSV writer trims spaces unless told not to
        writer.options(header=True, escape='"', ignoreLeadingWhiteSpace=False,
                       ignoreTrailingWhiteSpace=False).csv(path)
    elif fmt == "jsonl":
        writer.option("ignoreNullFields", False).json(path)
    else:
        writer.parquet(path)


@contextlib.contextmanager
def worker_errors_as_one_line():
    """A PipelineError raised on a worker reaches the driver inside Spark's long report: raise its line alone."""
    try:
        yield
    except Exception as e:
        found = re.findall(r"PipelineError: (.+)", str(e))
        if found:
            raise PipelineError(found[-1].strip()) from None
        raise


def hadoop_replace(spark, src: str, dst: str) -> None:
    """Rename src to dst on the output's file system (local, HDFS, ...), replacing dst."""
    jvm, conf = spark._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    src_p, dst_p = jvm.org.apache.hadoop.fs.Path(src), jvm.org.apache.hadoop.fs.Path(dst)
    fs = src_p.getFileSystem(conf)
    if fs.exists(dst_p):
        fs.delete(dst_p, True)
    if not fs.rename(src_p, dst_p):
        raise PipelineError(f"could not rename {src} to {dst}")


def status_counts(spark, path: str, fmt: str, status_column: str) -> dict:
    """Counted on the written output (a cheap read), so retried tasks are not counted twice."""
    df = read_input(spark, path, fmt)
    counts = dict.fromkeys(STATUSES, 0)
    for row in df.groupBy(status_column).count().collect():
        counts[row[0]] = row[1]
    return counts


def run_cli(args, rdir: Path) -> dict:
    if "-" in (args.input, args.output):
        raise PipelineError("--engine spark reads and writes files (or folders), not '-'")
    if args.resume:
        raise PipelineError("--resume is for the local engine: Spark retries failed tasks itself")
    if args.workers != 1:
        raise PipelineError("--workers is for the local engine: Spark uses its executors' cores "
                            "(--spark-master local[N], or spark-submit's --num-executors/--executor-cores)")
    fmt = format_of(args.input, args.format)
    out_fmt = args.format or FORMATS.get(Path(args.output).suffix.lower(), fmt)
    if out_fmt != fmt:
        raise PipelineError(f"the output is written in the input's format ({fmt}): name it *.{fmt}")
    check_not_same_file(args.input, args.output)
    spark = spark_session(args.spark_master)
    try:
        sc = spark.sparkContext
        df = read_input(spark, args.input, fmt)
        partitions = args.spark_partitions or 4 * sc.defaultParallelism
        df = in_input_order(df, partitions)
        threads = args.threads or int(sc.getConf().get("spark.task.cpus", "1"))
        scored = score_dataframe(df, rdir, args.text_column, prefix=args.prefix, batch_size=args.batch_size,
                                 threads=threads, worker_run_path=args.spark_run_path,
                                 ship=True if args.spark_ship_run else None, null_is_empty=fmt == "csv",
                                 max_chars=args.max_chars)
        partial = f"{args.output.rstrip('/')}.partial"
        start = time.perf_counter()
        with worker_errors_as_one_line():
            write_output(scored.drop(ROW_ID), partial, fmt)
        elapsed = time.perf_counter() - start
        hadoop_replace(spark, partial, args.output)
        counts = status_counts(spark, args.output, fmt, f"{args.prefix}status")
    finally:
        spark.stop()
    rows = sum(counts.values())
    return {"rows": rows, "counts": counts, "seconds": elapsed, "rows_per_s": rows / elapsed if elapsed else 0.0}
