"""batch_predict on local Spark (``local[2]``) with the tiny ONNX model, against ``predict`` on the same rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from llmflow import PROJECT_ROOT
from llmflow.batch_predict import BatchPredictOptions, batch_predict, prepare_row
from llmflow.errors import InputError
from llmflow.tracking.names import PREDICTIONS_ARTIFACT_DIR, TAG_BATCH_MODEL_URI

QUESTIONS = [json.loads(line)["question"] for line in (PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines()]


def test_prepare_row_turns_a_prompt_into_one_user_message_and_names_a_bad_row():
    assert prepare_row('{"id": 7, "prompt": "Hi?"}', 16) == {
        "messages": [{"role": "user", "content": "Hi?"}],
        "max_tokens": 16,
        "id": "7",
        "error": None,
    }
    chat = prepare_row('{"messages": [{"role": "user", "content": "Hi?"}], "max_tokens": 4}', 16)
    assert chat["max_tokens"] == 4 and chat["error"] is None
    assert "not a JSON object" in prepare_row("{oops", 16)["error"]
    assert (
        "role 'robot' is not accepted" in prepare_row('{"messages": [{"role": "robot", "content": "x"}]}', 16)["error"]
    )
    assert "exactly one of 'messages'" in prepare_row('{"id": "a"}', 16)["error"]
    assert "unknown field(s) ['temperature']" in prepare_row('{"prompt": "x", "temperature": 0.5}', 16)["error"]
    assert prepare_row('{"prompt": "x", "max_tokens": 0}', 16)["error"]


def test_a_missing_input_file_is_refused_in_one_line(tracking_uri: str, tmp_path: Path):
    options = BatchPredictOptions(model_uri="models:/m-0", input_path=str(tmp_path / "none.jsonl"))
    with pytest.raises(InputError, match="input_path .* does not exist"):
        batch_predict(options)


@pytest.mark.integration  # starts a local Spark cluster (a JVM and Python workers)
@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
def test_batch_predict_answers_equal_predict_and_bad_rows_get_an_error(
    logged_onnx_model: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_format: str
):
    store, model_uri = logged_onnx_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    # 200 prompts: chat requests and raw prompts alternately, over the 60 questions the tiny model knows.
    rows = []
    for number in range(200):
        question = QUESTIONS[number % len(QUESTIONS)]
        if number % 2:
            rows.append({"id": f"q{number}", "prompt": question, "max_tokens": 16})
        else:
            rows.append({"id": f"q{number}", "messages": [{"role": "user", "content": question}], "max_tokens": 16})
    bad = ['{"id": "bad1", "messages": [{"role": "robot", "content": "x"}]}', "not json", '{"id": "bad3"}']
    lines = [json.dumps(row) for row in rows]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines[:50] + bad[:2] + lines[50:] + bad[2:]) + "\n")

    started = time.monotonic()
    result = batch_predict(
        BatchPredictOptions(
            model_uri=model_uri, input_path=str(path), output_format=output_format, spark_master="local[2]"
        )
    )
    print(f"batch_predict {output_format}: 203 rows in {time.monotonic() - started:.1f} s (with Spark start-up)")
    assert (result.rows, result.error_rows) == (203, 3)
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[TAG_BATCH_MODEL_URI] == model_uri
    assert run.data.metrics["rows_per_second"] > 0 and run.data.metrics["tokens_per_second"] > 0
    folder = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=PREDICTIONS_ARTIFACT_DIR))
    if output_format == "parquet":
        table = pd.read_parquet(folder)
    else:
        table = pd.concat([pd.read_json(part, lines=True) for part in sorted(folder.glob("part-*.json"))])
    assert sorted(table["row"]) == list(range(203))
    errors = table[table["error"].notna()]
    assert sorted(errors["row"]) == [50, 51, 202]
    assert "role 'robot' is not accepted" in errors.set_index("row").loc[50, "error"]
    scored = table[table["error"].isna()].set_index("id")

    model = mlflow.pyfunc.load_model(model_uri)
    requests = [
        {"messages": row.get("messages") or [{"role": "user", "content": row["prompt"]}], "max_tokens": 16}
        for row in rows
    ]
    expected = model.predict(pd.DataFrame(requests))
    for row, answer in zip(rows, expected, strict=True):
        got = scored.loc[row["id"]]
        assert got["answer"] == answer["choices"][0]["message"]["content"]
        assert got["finish_reason"] == answer["choices"][0]["finish_reason"]
        usage = got["usage"]
        assert dict(usage) == answer["usage"]
