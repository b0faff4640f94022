"""The Spark engine in local mode (Java 17 and pyspark, installed by scripts/setup_env.sh): on 2,000 rows, the
same statuses, labels and probabilities (within 1e-6) as predict.py's default engine."""

import glob
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from test_predict import build_tiny_int8_run, input_table, predict

from common import INT8_FILE, PipelineError, read_lineage, record_lineage

N_ROWS = 2000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_int8_run(tmp_path_factory.mktemp("spark"))


@pytest.fixture(scope="module")
def reference(tiny):
    """2,000 rows (a few empty, one with quotes and a line break) scored by predict.py's local engine."""
    df = input_table(tiny["texts"], N_ROWS)
    df.loc[11, "text"] = ""
    src = tiny["tmp"] / "rows.csv"
    df.to_csv(src, index=False)
    out = tiny["tmp"] / "local.csv"
    predict(tiny, "--input", src, "--output", out, "--prefix", "pred_")
    return {"src": src, "df": df, "out": pd.read_csv(out, dtype=str, keep_default_na=False)}


def assert_same_scores(got: pd.DataFrame, want: pd.DataFrame):
    assert got["pred_status"].tolist() == want["pred_status"].tolist()
    ok = (want["pred_status"] == "ok").to_numpy()
    assert got["pred_label"][ok].tolist() == want["pred_label"][ok].tolist()
    for col in ("pred_score", "pred_prob_negative", "pred_prob_positive"):
        diff = (got[col][ok].astype(float).to_numpy() - want[col][ok].astype(float).to_numpy())
        assert abs(diff).max() <= 1e-6, col


def test_predict_cli_spark_engine_matches_local_engine(tiny, reference):
    """predict.py --engine spark on local[2], the run zipped and shipped as on a cluster: the output folder's
    part files, in name order, are the input rows in order with the local engine's scores."""
    out = tiny["tmp"] / "spark.csv"
    proc = predict(tiny, "--engine", "spark", "--spark-master", "local[2]", "--spark-partitions", 4,
                   "--spark-ship-run", "--input", reference["src"], "--output", out, "--prefix", "pred_",
                   timeout=1800)  # JVM and Python workers start slowly on a loaded machine
    assert f"scored {N_ROWS} rows" in proc.stdout and "empty_text 3" in proc.stdout, proc.stdout
    parts = sorted(glob.glob(str(out / "part-*.csv")))
    assert len(parts) == 4 and (out / "_SUCCESS").exists()
    assert not list(tiny["tmp"].glob("spark.csv.partial*"))
    got = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in parts], ignore_index=True)
    want = reference["out"]
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got[["id", "text", "label"]], want[["id", "text", "label"]])
    assert_same_scores(got, want)


def test_score_dataframe_in_a_spark_session(tiny, reference):
    """The library function on a DataFrame of the user's session, the run read from its folder; a null text
    is missing_text."""
    from spark_scoring import score_dataframe, spark_session

    spark = spark_session("local[2]", conf={"spark.sql.shuffle.partitions": "2"})
    try:
        pdf = reference["df"].copy()
        pdf.loc[11, "text"] = None
        df = spark.createDataFrame(pdf).repartition(3)
        scored = score_dataframe(df, tiny["run"], "text", prefix="pred_").toPandas()
        import spark_scoring  # what was shipped is keyed by the application, not by id(SparkContext)

        assert (spark.sparkContext.applicationId, "modules") in spark_scoring._SHIPPED
    finally:
        spark.stop()
    got = scored.set_index("id").loc[reference["df"]["id"]].reset_index()
    want = reference["out"].copy()
    want.loc[11, "pred_status"] = "missing_text"
    assert_same_scores(got, want)
    assert json.loads(got.loc[11].to_json())["pred_label"] is None


def requantize(run, bias_shift: float) -> None:
    """What a re-quantization into the same run folder does: another INT8 model file (here the classifier's bias
    shifted), recorded in lineage.json as quantize_onnx_dynamic.py records it."""
    import onnx
    from onnx import numpy_helper

    path = run / INT8_FILE
    model = onnx.load(path)
    bias = next(i for i in model.graph.initializer if i.name == "classifier.bias")
    shifted = numpy_helper.to_array(bias) + np.array([bias_shift, 0], np.float32)
    bias.CopyFrom(numpy_helper.from_array(shifted, bias.name))
    onnx.save(model, run / ".requantized.onnx")
    os.replace(run / ".requantized.onnx", path)
    record_lineage(run, INT8_FILE, read_lineage(run)[INT8_FILE]["made_from"])


def test_a_reused_worker_scores_with_the_runs_current_model(tiny, tmp_path):
    """The mapInPandas function in a Python worker that Spark reuses (here this process), the run read from its
    folder: after the run is re-quantized it scores with the new model, not the Predictor cached for the folder;
    and it refuses, with one line, a model other than the one the driver verified."""
    import spark_scoring
    from predictor import Predictor
    from scoring import model_sha256

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    texts = tiny["texts"][:6]

    def score(verified_sha256):
        batches = spark_scoring.score_batches(("path", str(run)), verified_sha256, 1, 1, "text", "", False, 2000,
                                              [pd.DataFrame({"text": texts})])
        return pd.concat(list(batches))["prob_negative"].tolist()

    first_sha = model_sha256(run)
    before = score(first_sha)
    requantize(run, 3.0)
    after = score(model_sha256(run))
    assert after == [p["probabilities"]["negative"] for p in Predictor(run, threads=1).predict(texts)]
    assert all(a != b for a, b in zip(after, before))
    with pytest.raises(PipelineError, match="not the model the driver verified") as refused:
        score(first_sha)
    assert "\n" not in str(refused.value)
