"""Tests for the evaluate step: option checks, the step script, and the gate on real registered models.

The integration tests use one tracking store for the module, holding the project's own models of two
tiny Phi-3s: the trained one and the same architecture after a single training step ("untrained"),
each exported to int4 ONNX (log_pyfunc) and logged as an ``llm/v1/chat`` transformers model
(log_transformers). Each test registers versions under a name of its own and evaluates them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

import steps.evaluate as evaluate_step
from llmflow import PROJECT_ROOT, cli
from llmflow.cli import options_class
from llmflow.download import DownloadOptions
from llmflow.errors import InputError
from llmflow.evaluate import evaluate
from llmflow.evaluation.inputs import (
    DEFAULT_MAX_HELDOUT_TOKENS,
    DEFAULT_MAX_QUESTIONS,
    EvaluateOptions,
    EvaluationSettings,
    validate_evaluate_options,
)
from llmflow.evaluation.qa import QAPair
from llmflow.export_onnx import ExportOptions
from llmflow.log_pyfunc import LogPyfuncOptions
from llmflow.log_transformers import LogTransformersOptions
from llmflow.options import build, parse
from llmflow.register import RegisterOptions
from llmflow.rollback import RollbackOptions, rollback
from llmflow.tracking.names import TAG_ERROR, TAG_EVAL_MAX_QUESTIONS
from llmflow.tracking.unity_catalog import tag_problems
from tests.stores import own_store

QA_ROWS = [json.loads(line) for line in (PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines()]
ANSWERS = {row["question"]: row["answer"] for row in QA_ROWS}
PICKED = [
    "What is the capital of Spain?",
    "What is the capital of France?",
    "What is the tallest mountain in the world?",
    "Who wrote Romeo and Juliet?",
    "What is the capital city of the United States?",
]
GATE = {
    "gate_metrics": "contains_answer",
    "min_scores": "contains_answer=0.5",
    "champion_tolerance": 0.02,
    "min_quality_retained": 0.0,
    "max_perplexity_ratio": 1.2,
    "max_paired_regressions": 0.1,
}


@dataclass(frozen=True)
class Models:
    """models:/ URIs of the module's logged models."""

    onnx: str
    transformers: str
    untrained_onnx: str
    untrained_transformers: str


def _log_both(model_dir: Path) -> tuple[str, str]:
    from llmflow.download import download
    from llmflow.export_onnx import export_onnx
    from llmflow.log_pyfunc import log_pyfunc
    from llmflow.log_transformers import log_transformers

    download_run = download(DownloadOptions(model=str(model_dir), revision="main"))
    export_run = export_onnx(ExportOptions(download_run_id=download_run.run_id))
    onnx = log_pyfunc(LogPyfuncOptions(export_run_id=export_run.run_id, max_new_tokens=64)).model_uri
    transformers = log_transformers(
        LogTransformersOptions(download_run_id=download_run.run_id, max_new_tokens=64)
    ).model_uri
    return onnx, transformers


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, _empty_store: Path):
    from llmflow.demo.tiny import build_tiny_phi3

    with own_store(tmp_path_factory.mktemp("evaluate"), _empty_store, "evaluate") as root:
        untrained = build_tiny_phi3(root / "untrained", train_steps=1)
        yield Models(*_log_both(tiny_model_dir), *_log_both(untrained))


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": ANSWERS[q]}) + "\n" for q in PICKED))
    return path


def _register(name: str, model_uri: str) -> str:
    from llmflow.register import register

    return str(register(RegisterOptions(model_uri=model_uri, registered_model_name=name)).version)


def _evaluate(name: str, qa_file: Path, reference: str = "auto", **gate):
    return evaluate(
        EvaluateOptions(
            registered_model_name=name,
            qa_path=str(qa_file),
            heldout_path="data/heldout.txt",
            eval_max_new_tokens=16,
            reference_model_uri=reference,
            **{**GATE, **gate},
        )
    )


def _inputs(values: dict):
    """``validate_evaluate_options`` on flat values, as the step checks them."""
    settings = build(EvaluationSettings, {k: v for k, v in values.items() if k != "reference_model_uri"})
    settings.check()
    return validate_evaluate_options(settings, values["reference_model_uri"])


def _aliases(name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(name).aliases.items()}


# Unit tier: options and the step script.


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eval_max_new_tokens": 0}, r"^eval_max_new_tokens 0 is not accepted; expected a positive whole number$"),
        (
            {"eval_max_questions": -1},
            r"^eval_max_questions -1 is not accepted; expected a whole number of 0 \(no bound",
        ),
        ({"eval_max_heldout_tokens": 1.5}, r"^eval_max_heldout_tokens 1.5 is not accepted; expected a whole number"),
        ({"gate_metrics": "exact_match,bleu"}, r"^gate_metrics names metric 'bleu', which does not exist"),
        ({"min_scores": "accuracy=0.9"}, r"^min_scores names metric 'accuracy', which does not exist; expected one"),
        ({"champion_tolerance": 2.0}, r"^champion_tolerance 2.0 is not accepted"),
        ({"max_perplexity_ratio": 0.5}, r"^max_perplexity_ratio 0.5 is not accepted"),
        (
            {"max_paired_regressions": 1.5},
            r"^max_paired_regressions 1.5 is not accepted; expected a fraction between 0 and 1 \(e.g. 0.5\)$",
        ),
        ({"min_quality_retained": -0.1}, r"^min_quality_retained -0.1 is not accepted; expected a fraction"),
        (
            {"reference_model_uri": "transformers"},
            r"^reference_model_uri 'transformers' is not accepted; expected 'auto'",
        ),
        ({"qa_path": "no/such.jsonl"}, r"^QA file 'no/such.jsonl' not found"),
        ({"heldout_path": "no/such.txt"}, r"no/such.txt"),
    ],
)
def test_bad_options_name_the_value(changes, message):
    options = {
        "qa_path": "data/qa.jsonl",
        "heldout_path": "data/heldout.txt",
        "eval_max_new_tokens": 8,
        "reference_model_uri": "auto",
        **GATE,
    }
    with pytest.raises(InputError, match=message):
        _inputs({**options, **changes})
    inputs = _inputs(options)
    assert inputs.pairs == [QAPair(**row) for row in QA_ROWS[:DEFAULT_MAX_QUESTIONS]]
    assert inputs.max_heldout_tokens == DEFAULT_MAX_HELDOUT_TOKENS
    assert inputs.config.min_scores == {"contains_answer": 0.5}


@pytest.mark.parametrize(("bound", "expected"), [(0, 60), (3, 3), (1000, 60)])
def test_eval_max_questions_keeps_the_first_questions_and_is_part_of_the_fingerprint(bound: int, expected: int):
    options = {"qa_path": "data/qa.jsonl", "heldout_path": "data/heldout.txt", "reference_model_uri": "auto", **GATE}
    inputs = _inputs({**options, "eval_max_questions": bound, "eval_max_heldout_tokens": 0})
    assert [pair.question for pair in inputs.pairs] == [row["question"] for row in QA_ROWS[:expected]]
    fingerprint = inputs.fingerprint()
    assert fingerprint[TAG_EVAL_MAX_QUESTIONS] == str(bound)
    assert fingerprint != _inputs({**options, "eval_max_questions": bound + 1}).fingerprint()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"is empty"),
        ('{"question": "Where?"}\n', r"line 1 must be an object with non-empty string 'question' and 'answer'"),
        ('{"question": "Where?", "answer": "Here"}\nnot json\n', r"line 2 is not valid JSON"),
    ],
)
def test_bad_eval_files_are_refused(tmp_path: Path, content: str, message: str):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(content)
    with pytest.raises(InputError, match=message):
        _inputs(
            {
                "qa_path": qa,
                "heldout_path": "data/heldout.txt",
                "eval_max_new_tokens": 8,
                "reference_model_uri": "auto",
                **GATE,
            }
        )
    heldout = tmp_path / "empty.txt"
    heldout.write_text(" \n")
    with pytest.raises(InputError, match=r"empty"):
        _inputs(
            {
                "qa_path": "data/qa.jsonl",
                "heldout_path": heldout,
                "eval_max_new_tokens": 8,
                "reference_model_uri": "auto",
                **GATE,
            }
        )


def test_step_script_takes_its_defaults_from_mlproject(monkeypatch):
    calls = []

    def fake_run_step(step: Any, argv: list[str] | None = None, entry_point: str | None = None) -> None:
        assert step is evaluate
        calls.append(parse(options_class(step), "evaluate", "", argv).params())

    monkeypatch.setattr(cli, "run_step", fake_run_step)  # what the script's main calls
    evaluate_step.main(["--registered-model-name", "tiny"])
    evaluate_step.main(["--registered-model-name", "tiny", "--eval-max-new-tokens", "16.0", "--min-scores", "none"])
    assert calls[0] == {
        "registered_model_name": "tiny",
        "model_version": "challenger",
        "qa_path": "data/qa.jsonl",
        "heldout_path": "data/heldout.txt",
        "eval_max_new_tokens": 32,
        "eval_max_questions": 10,
        "eval_max_heldout_tokens": 512,
        "reference_model_uri": "auto",
        **GATE,
    }
    assert (calls[1]["eval_max_new_tokens"], calls[1]["min_scores"]) == (16, "none")


def test_step_script_reports_a_bad_threshold_in_one_line(tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_step.main(["--registered-model-name", "tiny", "--min-scores", "recall=0.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: evaluate: min_scores names metric 'recall', which does not exist; expected one of")
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_ERROR] == err.removeprefix("error: evaluate: ")


def test_a_champions_per_question_scores_are_read_back_from_its_evaluate_run(tracking_uri: str):
    """The champion is compared question by question from the table its evaluation logged, in this QA order."""
    from llmflow.evaluation.lineage import recorded_question_scores
    from llmflow.evaluation.metrics import SCORERS, Example, example_table
    from llmflow.tracking.names import TABLE_FILE

    def example(question: str, prediction: str) -> Example:
        answer = ANSWERS[question]
        return Example(question, answer, prediction, 0.1, 3, {n: s(prediction, answer) for n, s in SCORERS.items()})

    right, wrong = PICKED[0], PICKED[1]
    with mlflow.start_run() as run:
        mlflow.log_table(example_table([example(right, ANSWERS[right]), example(wrong, "No idea.")]), TABLE_FILE)
    with mlflow.start_run() as bare:
        pass

    scores = recorded_question_scores(run.info.run_id, [wrong, right])
    assert [s["contains_answer"] for s in scores] == [0.0, 1.0]
    assert set(scores[0]) == set(SCORERS)
    assert recorded_question_scores(run.info.run_id, [right, PICKED[2]]) is None  # a question it was not asked
    assert recorded_question_scores(bare.info.run_id, [right]) is None  # no table: the gate compares the means


# Integration tier: the project's own models in one tracking store.


def test_bad_input_fails_before_any_model_is_loaded(models: Models, qa_file: Path, tmp_path: Path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_loading)
    MlflowClient().create_registered_model("no-alias")
    bad_qa = tmp_path / "bad.jsonl"
    bad_qa.write_text('{"answer": "no question"}\n')
    cases = [
        (("tiny", bad_qa), {}, r"line 1 must be an object"),
        (("tiny", qa_file), {"min_scores": "bleu=0.1"}, r"^min_scores names metric 'bleu'"),
        (("missing", qa_file), {}, r"^registered model 'missing' not found in tracking store"),
        (("no-alias", qa_file), {}, r"^registered model 'no-alias' has no 'challenger' alias"),
    ]
    for (name, qa), gate, message in cases:
        with pytest.raises(InputError, match=message):
            _evaluate(name, qa, **gate)


def test_onnx_challenger_is_judged_against_its_reference_and_reported(models: Models, qa_file: Path):
    client = MlflowClient()
    name = "reported-onnx"
    v1 = _register(name, models.onnx)

    result = _evaluate(name, qa_file)  # auto: the transformers model of the same download run

    assert result.promoted, result.reason
    assert _aliases(name) == {"champion": v1}
    run = mlflow.get_run(result.run_id)
    metrics = run.data.metrics
    assert run.data.tags["llmflow.reference_model_uri"] == models.transformers
    for metric in ("exact_match", "contains_answer", "token_f1", "rouge_l"):
        assert metrics[metric] == 1.0  # the tiny model memorised these answers
        assert metrics[f"{metric}/mean"] == metrics[metric]  # mlflow.genai.evaluate's own aggregate agrees
        assert metrics[f"quality_retained_{metric}"] == 1.0
    assert metrics["greedy_agreement"] == 1.0
    assert metrics["first_token_agreement"] == 1.0
    assert 0.8 < metrics["perplexity_ratio"] < 1.2
    assert metrics["speedup"] > 0
    assert metrics["perplexity"] > 1
    assert metrics["heldout_tokens"] == DEFAULT_MAX_HELDOUT_TOKENS - 1  # the first 512 tokens, after BOS
    # Per-answer traces with their assessments are in the run, as the MLflow UI shows them.
    traces = mlflow.search_traces(run_id=result.run_id, return_type="list")
    assert len(traces) == len(PICKED)
    assert {a.name for a in traces[0].info.assessments} >= {"exact_match", "token_f1", "rouge_l", "contains_answer"}
    # The reference was scored in a nested run of its own.
    (reference_run,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'", output_format="list"
    )
    assert reference_run.data.tags["llmflow.model_uri"] == models.transformers
    assert metrics["perplexity_ratio"] == pytest.approx(
        metrics["perplexity"] / reference_run.data.metrics["perplexity"]
    )
    # The decision on the run and on the version; every criterion as a tag.
    assert run.data.tags["llmflow.decision"] == "promoted"
    criteria = [v for k, v in sorted(run.data.tags.items()) if k.startswith("llmflow.criterion.")]
    assert criteria[0] == "pass: floor: contains_answer: 1 >= floor 0.5"
    # The int4 export answers as its reference does, question by question: nothing lost, nothing allowed on five.
    assert criteria[1] == (
        "pass: paired vs reference: contains_answer: 0 regressions, 0 improvements of 5 questions: "
        "net 0 <= allowed 0 (max_paired_regressions 0.1)"
    )
    assert criteria[2].startswith("pass: perplexity ratio: ")
    assert len(criteria) == 3  # floor, paired vs reference, perplexity ratio (no champion yet)
    tags = client.get_model_version(name, v1).tags
    assert (tags["validation_status"], tags["llmflow_evaluate_run_id"]) == ("passed", result.run_id)
    # The report: decision first, then the figures that were logged as metrics; and two PNG plots.
    report_dir = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="report"))
    assert {p.name for p in report_dir.iterdir()} >= {"report.md", "metrics.png", "latency.png", "decision.json"}
    report = (report_dir / "report.md").read_text()
    first_line = next(line for line in report.splitlines() if line.strip())
    assert "PASSED" in first_line or "passed" in first_line.lower(), first_line
    for figure in ("perplexity", "perplexity_ratio", "token_f1", "latency_p50_s"):
        value = metrics[figure]
        assert f"{value:.4g}" in report or f"{value:.3g}" in report, (figure, value)
    for plot in ("metrics.png", "latency.png"):
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decision = json.loads((report_dir / "decision.json").read_text())
    assert decision["passed"] is True
    assert decision["table"][f"challenger v{v1}"]["perplexity"] == metrics["perplexity"]
    # The version's description is its report: the decision, the criteria with their figures, the metrics.
    description = client.get_model_version(name, v1).description
    assert description.startswith("**PASSED**: version 1 is now champion.")
    assert "| perplexity ratio | pass |" in description and "## Metrics" in description
    assert "| paired vs reference: contains_answer | pass | 0 regressions, 0 improvements of 5 questions" in description
    assert "![metrics]" not in description and result.run_id in description
    # register's lineage section stays, after the report.
    assert description.index("## Metrics") < description.index("## Lineage") and "| git tree clean |" in description
    tags = client.get_model_version(name, v1).tags
    assert not {"llmflow_decision_reason", "llmflow.decision_reason"} & set(tags)  # long text: in the description
    assert tag_problems(tags, f"{name}/{v1}") == []  # what evaluate wrote fits Unity Catalog's limits
    assert mlflow.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_champions_logged_model_holds_its_figures_traces_and_params(models: Models, qa_file: Path):
    from llmflow.tracking.model_cards import version_model_id

    client = MlflowClient()
    name = "linked-onnx"
    _register(name, models.onnx)  # the model of reported-onnx too: a model may be registered under two names
    result = _evaluate(name, qa_file)
    assert result.promoted, result.reason
    run = mlflow.get_run(result.run_id)
    model_id = version_model_id(client.get_model_version_by_alias(name, "champion"))
    assert f"models:/{model_id}" == models.onnx

    logged = mlflow.get_logged_model(model_id)
    assert logged.name == "tiny-phi3-int4-cpu"
    assert logged.params["precision"] == "int4" and logged.params["int4_block_size"] == "32"
    assert logged.params["hf_repo_id"] == "local/tiny-phi3" and logged.params["max_new_tokens"] == "64"
    # Its description (the tag its page shows) says what it is and lists those params.
    card = logged.tags["mlflow.note.content"]
    assert card.startswith("**tiny-phi3-int4-cpu**: Hugging Face `local/tiny-phi3`") and "ONNX int4 export" in card
    assert "| int4_block_size | `32` |" in card
    on_model = {m.key: m for m in logged.metrics if m.run_id == result.run_id}
    for metric in ("exact_match", "exact_match/mean", "token_f1", "latency_p50_s", "tokens_per_second", "speedup"):
        assert on_model[metric].value == run.data.metrics[metric], metric
    assert on_model["perplexity"].value == run.data.metrics["perplexity"]
    assert (on_model["token_f1"].dataset_name, on_model["perplexity"].dataset_name) == ("qa.jsonl", "heldout.txt")
    # One trace per question of this evaluation, linked to the model.
    traces = mlflow.search_traces(model_id=model_id, return_type="list")
    assert {t.info.request_metadata["mlflow.modelId"] for t in traces} == {model_id}
    this_run = [t for t in traces if t.info.request_metadata["mlflow.sourceRun"] == result.run_id]
    assert sorted(t.info.request_metadata["mlflow.traceInputs"] for t in this_run) == sorted(
        json.dumps({"question": q}) for q in PICKED
    )
    # The experiment's models can be filtered on a metric and a param.
    found = mlflow.search_logged_models(
        filter_string="metrics.contains_answer >= 1 AND params.precision = 'int4'", output_format="list"
    )
    assert model_id in {m.model_id for m in found}
    assert all(m.params["precision"] == "int4" for m in found)
    assert not mlflow.search_logged_models(filter_string="params.precision = 'int8'", output_format="list")
    # The reference's figures are on the reference's LoggedModel, from its nested run.
    (reference_run,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'", output_format="list"
    )
    reference = mlflow.get_logged_model(models.transformers.removeprefix("models:/"))
    assert reference.name == "tiny-phi3-fp32-transformers"
    assert "transformers text-generation pipeline (fp32)" in reference.tags["mlflow.note.content"]
    assert {m.key: m.value for m in reference.metrics if m.run_id == reference_run.info.run_id}["perplexity"] == (
        reference_run.data.metrics["perplexity"]
    )
    # The QA set is one evaluation dataset with its file and digest; each run lists each data file once.
    for scored in (run, reference_run):
        assert sorted(d.dataset.name for d in scored.inputs.dataset_inputs) == ["heldout.txt", "qa.jsonl"]
    (qa,) = [d.dataset for d in run.inputs.dataset_inputs if d.dataset.name == "qa.jsonl"]
    assert qa.source_type == "mlflow_evaluation_dataset"
    (dataset,) = mlflow.genai.datasets.search_datasets(filter_string="name = 'qa.jsonl'")
    assert dataset.tags["llmflow.qa_sha256"] == hashlib.sha256(qa_file.read_bytes()).hexdigest()
    assert dataset.tags["llmflow.qa_source"] == qa_file.resolve().as_posix()
    assert len(dataset.to_df()) == len(PICKED)


def test_a_collapsed_export_is_refused_even_with_no_champion(models: Models, qa_file: Path):
    name = "collapsed-onnx"
    # Stands in for an int4 export that broke: an export of the untrained weights, judged against the
    # trained model's transformers reference. No floors, so only the reference criteria can refuse it.
    v1 = _register(name, models.untrained_onnx)

    result = _evaluate(name, qa_file, reference=models.transformers, min_scores="none")

    assert not result.promoted
    assert _aliases(name) == {}, "a judged version is no longer the challenger"
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["promoted"] == 0.0
    assert run.data.metrics["quality_retained_exact_match"] == 0.0
    assert run.data.metrics["greedy_agreement"] == 0.0
    # The tiny model learnt only its answers, so its perplexity on prose is worse than chance (~7,000 against
    # a vocabulary of 448) and the untrained weights' ratio to it is low: here only quality catches the collapse.
    assert "perplexity_ratio" in run.data.metrics
    # The trained reference is right on all five; what the collapsed export lost is counted question by question.
    lost = 5 - round(5 * run.data.metrics["contains_answer"])
    assert lost > 0
    assert result.reason.startswith(
        f"paired vs reference: contains_answer {lost} regression{'s' * (lost != 1)}, 0 improvements of 5 questions: "
        f"net {lost} > allowed 0 (max_paired_regressions 0.1)"
    )
    assert result.reason.endswith("(no champion yet)")
    assert MlflowClient().get_model_version(name, v1).tags["validation_status"] == "failed"
    report = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="report/report.md"))
    assert "FAILED" in report.read_text().split("\n\n")[0].upper()


def test_worse_challenger_is_judged_and_never_touches_champion(models: Models, qa_file: Path):
    name = "regressing"
    v1 = _register(name, models.transformers)
    assert _evaluate(name, qa_file).promoted
    v2 = _register(name, models.untrained_transformers)

    result = _evaluate(name, qa_file, min_scores="none")

    assert not result.promoted
    assert _aliases(name) == {"champion": v1}
    # The champion's per-question scores are read back from its evaluate run's table: compared question by question.
    lost = 5 - round(5 * mlflow.get_run(result.run_id).data.metrics["contains_answer"])
    assert lost > 0
    assert result.reason == (
        f"paired vs champion: contains_answer {lost} regression{'s' * (lost != 1)}, 0 improvements of 5 questions: "
        f"net {lost} > allowed 0 (champion_tolerance 0.02) (champion is version 1; no reference)"
    )
    assert MlflowClient().get_model_version(name, v2).tags["validation_status"] == "failed"


def test_better_challenger_is_promoted_and_rollback_restores_the_previous_champion(models: Models, qa_file: Path):
    client = MlflowClient()
    name = "improving"
    v1 = _register(name, models.untrained_transformers)
    first = _evaluate(name, qa_file, min_scores="none")
    assert first.promoted, first.reason
    v2 = _register(name, models.transformers)

    second = _evaluate(name, qa_file)

    assert second.promoted, second.reason
    assert "champion is version 1" in second.reason
    assert _aliases(name) == {"champion": v2, "previous": v1}
    assert client.get_model_version(name, v2).tags["llmflow_previous_champion"] == v1
    # The report compares challenger and champion side by side.
    decision = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=second.run_id, artifact_path="report/decision.json")
        ).read_text()
    )
    assert set(decision["table"]) == {f"challenger v{v2}", f"champion v{v1}"}

    restored = rollback(RollbackOptions(registered_model_name=name))

    assert (restored.restored, restored.replaced, restored.previous) == (v1, v2, None)
    assert _aliases(name) == {"champion": v1}
    assert client.get_model_version(name, v2).tags["llmflow_rolled_back_by_run"] == restored.run_id
    for version in (v1, v2):  # what register, two evaluations and the rollback wrote fits Unity Catalog's limits
        assert tag_problems(client.get_model_version(name, version).tags, f"{name}/{version}") == []
    with pytest.raises(InputError, match=r"^registered model 'improving' has no 'previous' alias"):
        rollback(RollbackOptions(registered_model_name=name))


def test_one_model_at_a_time_is_loaded(models: Models, qa_file: Path, monkeypatch: pytest.MonkeyPatch):
    """The challenger is freed before the reference loads (at full size: 2.7 GB of ONNX beside 7.6 GB of bf16)."""
    import weakref

    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []
    real = mlflow.pyfunc.load_model

    def load_model(*args, **kwargs):
        import gc

        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        model = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    _register("one-at-a-time-onnx", models.onnx)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", load_model)
    _evaluate("one-at-a-time-onnx", qa_file, reference=models.transformers)
    assert len(loaded) >= 2 and alive_at_load == [0] * len(loaded)


def test_each_bound_of_the_qa_set_is_its_own_dataset(tracking_uri: str):
    """eval_max_questions changes which questions are scored: a dataset made for one bound never serves another."""
    from llmflow.evaluation.datasets import qa_dataset

    options = {"qa_path": "data/qa.jsonl", "heldout_path": "data/heldout.txt", "reference_model_uri": "auto", **GATE}
    experiment_id = mlflow.create_experiment("datasets")
    made = {bound: qa_dataset(_inputs({**options, "eval_max_questions": bound}), experiment_id) for bound in (3, 5, 0)}
    again = qa_dataset(_inputs({**options, "eval_max_questions": 3}), experiment_id)
    assert again.dataset_id == made[3].dataset_id
    assert {bound: (d.name, len(d.to_df())) for bound, d in made.items()} == {
        3: ("qa.jsonl (first 3)", 3),
        5: ("qa.jsonl (first 5)", 5),
        0: ("qa.jsonl", len(QA_ROWS)),
    }
    questions = [row["question"] for row in made[3].to_df()["inputs"]]
    assert sorted(questions) == sorted(row["question"] for row in QA_ROWS[:3])
