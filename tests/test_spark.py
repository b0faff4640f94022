"""The Spark engine in local mode (Java 17 and pyspark, installed by scripts/setup_env.sh): on 2,000 rows, the
same statuses, labels and probabilities (within 1e-6) as predict.py's default engine."""

import glob
import json

import pandas as pd
import pytest
from test_predict import build_tiny_int8_run, input_table, predict

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
    finally:
        spark.stop()
    got = scored.set_index("id").loc[reference["df"]["id"]].reset_index()
    want = reference["out"].copy()
    want.loc[11, "pred_status"] = "missing_text"
    assert_same_scores(got, want)
    assert json.loads(got.loc[11].to_json())["pred_label"] is None
