"""Tests for the evaluate step: option checks, the step script, and evaluations of registered models.

The integration tests register real models in a temporary store: the tiny Phi-3 as a transformers
``llm/v1/chat`` model, and prompt-in/text-out pyfuncs that stand in for the ONNX model (one that
generates with the tiny Phi-3, and "answer books" that know a fixed set of answers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import steps.evaluate as evaluate_step
from llmflow.download import download
from llmflow.errors import InputError
from llmflow.evaluate import evaluate, pick_adapter, validate_evaluate_options
from llmflow.runs import PROJECT_ROOT, TAG_DOWNLOAD_RUN, TAG_ERROR

QA_ROWS = [json.loads(line) for line in (PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines()]
# Spain (one word), Paris (a two-token answer), and answers with several words and punctuation.
PICKED = [
    "What is the capital of Spain?",
    "What is the capital of France?",
    "What is the tallest mountain in the world?",
    "Who wrote Romeo and Juliet?",
    "What is the capital city of the United States?",
]
ANSWERS = {row["question"]: row["answer"] for row in QA_ROWS}
PROMPT_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 32)]),
)
PHI3_PROMPT = re.compile(r"<\|user\|>\n(.*)<\|end\|>\n<\|assistant\|>\n", re.DOTALL)


class AnswerBook(mlflow.pyfunc.PythonModel):
    """A prompt-in, text-out pyfunc that knows some answers, and reads only Phi-3 chat prompts."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        replies = []
        for prompt in model_input["prompt"]:
            match = PHI3_PROMPT.fullmatch(prompt)
            replies.append(self.answers.get(match.group(1), "I don't know") if match else "not a Phi-3 chat prompt")
        return replies


class TinyPromptModel(mlflow.pyfunc.PythonModel):
    """Stands in for the ONNX pyfunc: generates greedily from an already-templated prompt with the tiny Phi-3."""

    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["model"])
        self.model = AutoModelForCausalLM.from_pretrained(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        replies = []
        for prompt in model_input["prompt"]:
            ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            out = self.model.generate(**ids, max_new_tokens=params["max_new_tokens"], do_sample=False)
            replies.append(self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        return replies


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": ANSWERS[q]}) + "\n" for q in PICKED))
    return path


@pytest.fixture
def download_run_id(tracking_uri: str, tiny_model_dir: Path) -> str:
    return download(str(tiny_model_dir), "main").run_id


def _log_pyfunc(python_model: mlflow.pyfunc.PythonModel, **kwargs) -> str:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=python_model, signature=PROMPT_SIGNATURE, pip_requirements=["mlflow"], **kwargs
        )
    return info.model_uri


def _log_chat_model(model_dir: Path) -> str:
    import transformers

    pipe = transformers.pipeline("text-generation", model=str(model_dir))
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            pipe,
            name="model",
            task="llm/v1/chat",
            model_config={"do_sample": False},
            pip_requirements=["transformers", "torch"],
        )
    return info.model_uri


def _register_challenger(name: str, model_uri: str, download_run_id: str | None) -> str:
    tags = {TAG_DOWNLOAD_RUN: download_run_id} if download_run_id else {}
    version = mlflow.register_model(model_uri, name, tags=tags).version
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    return str(version)


def _champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def _answer_count(tokenizer_dir: Path, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir)(text, add_special_tokens=False)["input_ids"])


# Unit tier: options, adapters and the step script.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_exact_match": -0.1}, r"^min_exact_match -0.1 is not accepted; expected a fraction between 0 and 1"),
        ({"min_contains_answer": 1.5}, r"^min_contains_answer 1.5 is not accepted"),
        ({"min_contains_answer": float("nan")}, r"^min_contains_answer nan is not accepted"),
        ({"eval_max_new_tokens": 0}, r"^eval_max_new_tokens 0 is not accepted; expected a positive whole number$"),
        ({"eval_max_new_tokens": 2.5}, r"^eval_max_new_tokens 2.5 is not accepted"),
        ({"qa_path": "no/such/qa.jsonl"}, r"^QA file 'no/such/qa.jsonl' not found"),
    ],
)
def test_validate_options_names_the_bad_value(kwargs, message):
    options = {"qa_path": "data/qa.jsonl", "min_exact_match": 0.0, "min_contains_answer": 0.5, "eval_max_new_tokens": 8}
    with pytest.raises(InputError, match=message):
        validate_evaluate_options(**{**options, **kwargs})


def test_validate_options_names_an_empty_qa_file(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"^QA file '.*empty.jsonl' is empty; expected at least one"):
        validate_evaluate_options(empty, 0.0, 0.5, 8)


def test_validate_options_finds_a_relative_qa_path_from_the_project_root(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs = validate_evaluate_options("data/qa.jsonl", 0.0, 0.5, 8)
    assert len(pairs) == len(QA_ROWS)
    assert pairs[0].answer == "Madrid"


@pytest.mark.parametrize(
    ("flavors", "adapter"),
    [
        ({"python_function": {}, "transformers": {}}, "transformers"),
        ({"transformers": {}, "python_function": {}}, "transformers"),
        ({"python_function": {}}, "python_function"),
    ],
)
def test_pick_adapter(flavors, adapter):
    assert pick_adapter(flavors) == adapter


def test_pick_adapter_refuses_a_model_without_pyfunc():
    with pytest.raises(InputError, match=r"model flavours \['onnx'\] are not accepted"):
        pick_adapter({"onnx": {}})


def test_step_script_takes_its_defaults_from_mlproject(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate_step, "evaluate", lambda **kwargs: calls.append(kwargs))
    evaluate_step.main(["--registered-model-name", "tiny"])
    evaluate_step.main(["--registered-model-name", "tiny", "--eval-max-new-tokens", "16.0", "--min-exact-match", "1"])
    assert calls == [
        {
            "registered_model_name": "tiny",
            "qa_path": "data/qa.jsonl",
            "min_exact_match": 0.0,
            "min_contains_answer": 0.5,
            "eval_max_new_tokens": 32,
        },
        {
            "registered_model_name": "tiny",
            "qa_path": "data/qa.jsonl",
            "min_exact_match": 1.0,
            "min_contains_answer": 0.5,
            "eval_max_new_tokens": 16,
        },
    ]
    assert isinstance(calls[1]["eval_max_new_tokens"], int)


def test_step_script_reports_a_bad_threshold_in_one_line(tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_step.main(["--registered-model-name", "tiny", "--min-contains-answer", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: evaluate: min_contains_answer 2.0 is not accepted; expected a fraction between 0 and 1 (e.g. 0.5)"
    )
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_ERROR] == err.removeprefix("error: evaluate: ")


# Integration tier: real registered models in a temporary tracking store.


def test_bad_input_fails_before_any_model_is_loaded(tracking_uri, qa_file: Path, tmp_path: Path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_loading)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    MlflowClient().create_registered_model("no-alias")
    cases = [
        (("tiny", str(empty), 0.0, 0.5, 8), r"^QA file '.*empty.jsonl' is empty"),
        (("tiny", str(qa_file), 0.0, -1.0, 8), r"^min_contains_answer -1.0 is not accepted"),
        (("missing", str(qa_file), 0.0, 0.5, 8), r"^registered model 'missing' not found in tracking store"),
        (("no-alias", str(qa_file), 0.0, 0.5, 8), r"^registered model 'no-alias' has no 'challenger' alias \(aliases"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match=message):
            evaluate(*args)
    assert {run.info.status for run in mlflow.search_runs(output_format="list")} == {"FAILED"}


def test_a_version_without_its_download_run_is_refused(tracking_uri, qa_file: Path):
    _register_challenger("untagged", _log_pyfunc(AnswerBook(ANSWERS)), download_run_id=None)
    with pytest.raises(InputError, match=r"^version 1 of registered model 'untagged' has no 'llmflow.download_run_id'"):
        evaluate("untagged", str(qa_file), 0.0, 0.5, 8)
    assert set(MlflowClient().get_registered_model("untagged").aliases) == {"challenger"}


def test_chat_model_becomes_champion_and_a_worse_challenger_is_rejected(
    tracking_uri, tiny_model_dir: Path, download_run_id: str, qa_file: Path
):
    client = MlflowClient()
    name = "tiny-transformers"
    v1 = _register_challenger(name, _log_chat_model(tiny_model_dir), download_run_id)

    first = evaluate(name, str(qa_file), 0.0, 0.5, 32)

    assert (first.version, first.promoted) == (v1, True)
    assert first.metrics["exact_match"] == 1.0
    assert first.metrics["contains_answer"] == 1.0
    assert first.metrics["n_examples"] == len(PICKED)
    assert 0 < first.metrics["latency_p50_s"] <= first.metrics["latency_p95_s"]
    assert first.metrics["tokens_per_second"] > 0
    assert first.reason == "contains_answer 1.000 >= 0.500 and exact_match 1.000 >= 0.000 (no champion yet)"
    assert _champion(name) == v1
    run = mlflow.get_run(first.run_id)
    assert run.data.tags["llmflow.decision"] == "promoted"
    assert run.data.tags["llmflow.decision_reason"] == first.reason
    assert run.data.tags["llmflow.eval_adapter"] == "transformers"
    assert run.data.metrics["promoted"] == 1.0
    assert run.data.metrics["exact_match"] == 1.0
    tags = client.get_model_version(name, v1).tags
    assert tags["validation_status"] == "passed"
    assert tags["llmflow.evaluate_run_id"] == first.run_id
    assert tags["llmflow.decision_reason"] == first.reason
    table = mlflow.load_table("eval_table.json", run_ids=[first.run_id])
    assert table["prediction"].tolist() == [ANSWERS[q] for q in PICKED]
    assert table["exact_match"].all()
    # Counted with the download run's tokenizer, without the end token that the chat usage figure includes.
    assert table["completion_tokens"].tolist() == [_answer_count(tiny_model_dir, ANSWERS[q]) for q in PICKED]

    v2 = _register_challenger(name, _log_pyfunc(AnswerBook({})), download_run_id)
    second = evaluate(name, str(qa_file), 0.0, 0.5, 32)

    assert (second.version, second.promoted) == (v2, False)
    assert second.metrics["contains_answer"] == 0.0
    assert second.reason == (
        "contains_answer 0.000 < 0.500 and contains_answer 0.000 < champion's 1.000 and "
        "exact_match 0.000 < champion's 1.000 (champion is version 1)"
    )
    assert _champion(name) == v1
    run = mlflow.get_run(second.run_id)
    assert run.data.tags["llmflow.decision"] == "rejected"
    assert run.data.tags["llmflow.champion_version"] == v1
    assert run.data.tags["llmflow.eval_adapter"] == "python_function"
    assert run.data.metrics["promoted"] == 0.0
    tags = client.get_model_version(name, v2).tags
    assert tags["validation_status"] == "failed"
    assert tags["llmflow.evaluate_run_id"] == second.run_id
    assert mlflow.load_table("eval_table.json", run_ids=[second.run_id])["prediction"].eq("I don't know").all()


def test_prompt_model_gets_the_chat_template_and_max_new_tokens(
    tracking_uri, tiny_model_dir: Path, download_run_id: str, qa_file: Path
):
    name = "tiny-onnx-stand-in"
    uri = _log_pyfunc(TinyPromptModel(), artifacts={"model": str(tiny_model_dir)})
    v1 = _register_challenger(name, uri, download_run_id)

    full = evaluate(name, str(qa_file), 0.0, 0.5, 32)

    assert full.promoted
    assert full.metrics["exact_match"] == 1.0
    table = mlflow.load_table("eval_table.json", run_ids=[full.run_id])
    assert table["prediction"].tolist() == [ANSWERS[q] for q in PICKED]
    assert table["completion_tokens"].tolist() == [_answer_count(tiny_model_dir, ANSWERS[q]) for q in PICKED]

    # Two new tokens cut every answer but "Paris"; evaluating the champion again judges it on thresholds only.
    short = evaluate(name, str(qa_file), 0.0, 0.5, 2)

    assert short.version == v1
    assert short.metrics["exact_match"] == pytest.approx(1 / len(PICKED))
    table = mlflow.load_table("eval_table.json", run_ids=[short.run_id])
    assert table["completion_tokens"].max() <= 2
    assert not short.promoted
    assert short.reason.endswith("(re-evaluation of champion version 1)")
    assert _champion(name) == v1
    assert MlflowClient().get_model_version(name, v1).tags["validation_status"] == "failed"


def test_gate_follows_successive_challengers(tracking_uri, download_run_id: str, qa_file: Path):
    name = "answer-books"
    knows = [{q: ANSWERS[q] for q in questions} for questions in (PICKED[:3], PICKED[:2], PICKED[2:])]

    v1 = _register_challenger(name, _log_pyfunc(AnswerBook(knows[0])), download_run_id)
    assert evaluate(name, str(qa_file), 0.0, 0.5, 8).promoted
    assert _champion(name) == v1

    v2 = _register_challenger(name, _log_pyfunc(AnswerBook(knows[1])), download_run_id)
    regression = evaluate(name, str(qa_file), 0.0, 0.0, 8)
    assert not regression.promoted
    assert regression.reason.startswith("contains_answer 0.400 < champion's 0.600 and exact_match 0.400 < champion's")
    assert _champion(name) == v1

    v3 = _register_challenger(name, _log_pyfunc(AnswerBook(knows[2])), download_run_id)
    tie = evaluate(name, str(qa_file), 0.0, 0.5, 8)
    assert tie.promoted
    assert "contains_answer 0.600 >= champion's 0.600" in tie.reason
    assert _champion(name) == v3

    MlflowClient().set_registered_model_alias(name, "challenger", v3)
    again = evaluate(name, str(qa_file), 0.6, 0.6, 8)
    assert again.promoted
    assert again.reason == (
        "contains_answer 0.600 >= 0.600 and exact_match 0.600 >= 0.600 (re-evaluation of champion version 3)"
    )
    aliases = {alias: str(version) for alias, version in MlflowClient().get_registered_model(name).aliases.items()}
    assert aliases == {"challenger": v3, "champion": v3}
    assert MlflowClient().get_model_version(name, v2).tags["validation_status"] == "failed"


def test_a_champion_set_by_hand_is_judged_on_thresholds(tracking_uri, download_run_id: str, qa_file: Path):
    client = MlflowClient()
    name = "hand-picked"
    v1 = _register_challenger(name, _log_pyfunc(AnswerBook(ANSWERS)), download_run_id)
    client.set_registered_model_alias(name, "champion", v1)
    v2 = _register_challenger(name, _log_pyfunc(AnswerBook({q: ANSWERS[q] for q in PICKED[:3]})), download_run_id)

    result = evaluate(name, str(qa_file), 0.0, 0.5, 8)

    assert result.promoted
    assert result.reason.endswith("(champion version 1 has no recorded evaluation)")
    assert _champion(name) == v2
