"""Step ``batch_predict``: score a file of chat requests or prompts with a model on Spark, through ``spark_udf``.

Reads ``input_path``, a JSONL file (one request per line) or a Parquet file or folder (one request per row):
each request is a chat request (``messages``, optionally ``max_tokens``) or a raw ``prompt``, which is sent
as one user message so that both flavours (the ONNX pyfunc and the transformers ``llm/v1/chat`` model)
take it. An ``id`` field, if present, is carried through. Any model URI works: ``models:/<name>@champion``,
``models:/m-<id>``, ``runs:/...``.

Writes, in its MLflow run:
- artifact ``predictions/``: one row per input row (``row``, ``id``, ``request``, ``answer``,
  ``finish_reason``, ``usage`` with prompt, completion and total tokens, ``error``), as Parquet or JSONL
  files written by Spark;
- metrics ``rows``, ``error_rows``, ``rows_per_second`` and ``tokens_per_second`` (completion tokens over
  the wall time of scoring and writing);
- tag ``llmflow.batch_model_uri`` with the model URI it scored.

A row that is not a valid request (malformed JSON, no ``messages`` or ``prompt``, a bad role, a
non-string content, ``max_tokens`` < 1, an unknown field) is checked on Spark with the same parser the
ONNX model uses (``llmflow.chat_model.chat_protocol``), gets its message in ``error`` and is not scored; the
job goes on. A row that passes that check and that the model still refuses (such as a prompt longer than
the context) fails its Spark task, as ``spark_udf`` does.

Spark: ``local[*]`` by default (``spark_master``); on Databricks the cluster's own session is used and
``spark_master`` is ignored. Give ``output_dir`` a path that every executor and the driver can write and
read (a ``/Volumes/...`` path on Databricks); by default it is a temporary folder, right for local Spark.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

# At module level: pyspark reads the pandas UDF's (string) type hints in this module's globals.
import pandas as pd

from llmflow.errors import InputError
from llmflow.options import StepOptions, at_least, one_of, option
from llmflow.tracking.names import PREDICTIONS_ARTIFACT_DIR, TAG_BATCH_MODEL_URI
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
# What a row may hold; the sampling options stay the model's defaults (greedy), so every row is scored alike.
ROW_FIELDS = ("id", "messages", "prompt", "max_tokens")
# The chat completion columns kept from the model's answer; both flavours return these.
RESULT_TYPE = (
    "id string, object string, created long, model string, "
    "choices array<struct<index: long, message: struct<role: string, content: string>, finish_reason: string>>, "
    "usage struct<prompt_tokens: long, completion_tokens: long, total_tokens: long>"
)
PREPARED_TYPE = "messages array<struct<role: string, content: string>>, max_tokens long, id string, error string"


def _check_input_path(name: str, value: str) -> None:
    if not value.endswith((".jsonl", ".json", ".parquet")) and not Path(value).is_dir():
        raise InputError(f"{name} '{value}' is not accepted; expected a .jsonl file or a .parquet file or folder")


@dataclass(frozen=True, kw_only=True)
class BatchPredictOptions(StepOptions):
    """Score a file of chat requests or prompts with a model on Spark, through mlflow.pyfunc.spark_udf."""

    model_uri: str = option(help="Model to score with, e.g. models:/<name>@champion or models:/m-<id>.")
    input_path: str = option(
        help="JSONL file or Parquet file/folder of chat requests or prompts.", check=_check_input_path
    )
    output_format: str = option(
        "parquet", help="Format of the predictions artifact: parquet or jsonl.", check=one_of(*FORMATS)
    )
    max_tokens: int = option(64, help="Most tokens generated per row that gives no max_tokens.", check=at_least(1))
    spark_master: str = option("local[*]", help="Spark master for a local session; ignored on Databricks.")
    output_dir: str = option("", help="Folder Spark writes the predictions to before logging; '' for a temporary one.")


@dataclass(frozen=True)
class BatchPredictResult:
    run_id: str
    model_uri: str
    rows: int
    error_rows: int
    rows_per_second: float
    tokens_per_second: float
    predictions_uri: str


def prepare_row(text: str, max_tokens: int) -> dict[str, object]:
    """One input row (as JSON text) as the request columns the model gets, or its ``error``."""
    from llmflow.chat_model.chat_protocol import generation_options, parse_row

    empty = {"messages": None, "max_tokens": None, "id": None}
    try:
        row = {key: value for key, value in json.loads(text).items() if value is not None}
    except (json.JSONDecodeError, AttributeError) as exc:
        return {**empty, "error": f"not a JSON object: {exc}"}
    row_id = None if row.get("id") is None else str(row.pop("id"))
    unknown = sorted(set(row) - set(ROW_FIELDS))
    if unknown:
        return {**empty, "id": row_id, "error": f"unknown field(s) {unknown}; accepted: {', '.join(ROW_FIELDS)}"}
    try:
        request = parse_row(row, generation_options({"max_new_tokens": max_tokens}, None))
    except Exception as exc:  # noqa: BLE001 - the parser's MlflowException is this row's error, not the job's
        return {**empty, "id": row_id, "error": getattr(exc, "message", str(exc))}
    messages = request.messages or ({"role": "user", "content": request.prompt},)
    return {"messages": list(messages), "max_tokens": request.settings.max_tokens, "id": row_id, "error": None}


def _session(master: str):  # noqa: ANN202 - pyspark is imported lazily, only by this step
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError("batch_predict needs pyspark; install it with: pip install pyspark==4.3.0") from None
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return SparkSession.builder.getOrCreate(), False
    spark = SparkSession.builder.master(master).appName("llmflow-batch_predict").getOrCreate()
    return spark, True


def _score(spark, options: BatchPredictOptions, out: Path) -> dict[str, float]:  # noqa: ANN001
    from pyspark.sql import functions as F  # noqa: N812

    max_tokens = options.max_tokens

    @F.pandas_udf(PREPARED_TYPE)
    def prepare(texts: pd.Series) -> pd.DataFrame:
        return pd.DataFrame([prepare_row(text, max_tokens) for text in texts])

    if options.input_path.endswith((".jsonl", ".json")):
        raw = spark.read.text(options.input_path).withColumnRenamed("value", "request")
    else:
        table = spark.read.parquet(options.input_path)
        raw = table.select(F.to_json(F.struct(*table.columns)).alias("request"))
    numbered = raw.rdd.zipWithIndex().map(lambda pair: (pair[1], pair[0]["request"])).toDF("row long, request string")
    prepared = numbered.withColumn("prepared", prepare("request")).select("row", "request", "prepared.*")
    udf = mlflow.pyfunc.spark_udf(spark, options.model_uri, result_type=RESULT_TYPE, env_manager="local")
    scored = (
        prepared.where(F.col("error").isNull())
        .withColumn("completion", udf(F.struct("messages", "max_tokens")))
        .select(
            "row",
            "id",
            "request",
            F.col("completion.choices")[0]["message"]["content"].alias("answer"),
            F.col("completion.choices")[0]["finish_reason"].alias("finish_reason"),
            F.col("completion.usage").alias("usage"),
            "error",
        )
    )
    usage_type = "struct<prompt_tokens: long, completion_tokens: long, total_tokens: long>"
    failed = prepared.where(F.col("error").isNotNull()).select(
        "row",
        "id",
        "request",
        F.lit(None).cast("string").alias("answer"),
        F.lit(None).cast("string").alias("finish_reason"),
        F.lit(None).cast(usage_type).alias("usage"),
        "error",
    )
    writer = scored.unionByName(failed).orderBy("row").write.mode("overwrite")
    started = time.monotonic()
    writer.json(str(out)) if options.output_format == "jsonl" else writer.parquet(str(out))
    seconds = time.monotonic() - started
    written = spark.read.json(str(out)) if options.output_format == "jsonl" else spark.read.parquet(str(out))
    totals = written.agg(
        F.count("*").alias("rows"),
        F.count("error").alias("error_rows"),
        F.coalesce(F.sum("usage.completion_tokens"), F.lit(0)).alias("tokens"),
    ).first()
    return {
        "rows": totals["rows"],
        "error_rows": totals["error_rows"],
        "rows_per_second": totals["rows"] / seconds,
        "tokens_per_second": totals["tokens"] / seconds,
        "seconds": seconds,
    }


def batch_predict(options: BatchPredictOptions) -> BatchPredictResult:
    """Score every row of ``options.input_path`` with ``options.model_uri`` on Spark; log the answers and rates."""
    with step_run("batch_predict", options) as run, tempfile.TemporaryDirectory(prefix="llmflow-batch-") as tmp:
        if not (options.input_path.startswith(("dbfs:", "s3:", "abfss:", "gs:")) or Path(options.input_path).exists()):
            raise InputError(f"input_path '{options.input_path}' does not exist; expected a JSONL or Parquet file")
        spark, owned = _session(options.spark_master)
        try:
            out = Path(options.output_dir or tmp) / run.info.run_id
            figures = _score(spark, options, out)
        finally:
            if owned:
                spark.stop()
        mlflow.log_artifacts(str(out), PREDICTIONS_ARTIFACT_DIR)
        mlflow.log_metrics({name: float(value) for name, value in figures.items()})
        mlflow.set_tag(TAG_BATCH_MODEL_URI, options.model_uri)
        print(
            f"batch_predict: {figures['rows']} rows ({figures['error_rows']} with errors) "
            f"in {figures['seconds']:.1f} s: "
            f"{figures['rows_per_second']:.1f} rows/s, {figures['tokens_per_second']:.1f} tokens/s"
        )
        return BatchPredictResult(
            run.info.run_id,
            options.model_uri,
            int(figures["rows"]),
            int(figures["error_rows"]),
            figures["rows_per_second"],
            figures["tokens_per_second"],
            f"runs:/{run.info.run_id}/{PREDICTIONS_ARTIFACT_DIR}",
        )
