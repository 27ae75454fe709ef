"""What a person sees on the console: progress bars for work they wait on, and no INFO line they do not need."""

from __future__ import annotations

import inspect
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmflow import PROJECT_ROOT
from llmflow.chain.runner import quiet_projects
from llmflow.cli import QUIETED, Quieted, configure_logging
from llmflow.evaluation.scoring import _sequential_evaluation
from llmflow.patches.mlflow import artifact_bars_honour_tqdm
from llmflow.patches.onnxruntime_genai import builder_model_classes, builder_modules, save_bar_described_quietly

# A bar over `seconds` of work, written to stdout so the test reads it; tqdm's settings as the project leaves them.
BAR = """
import time, sys
import llmflow
from tqdm.auto import tqdm
import os
steps = 8
with tqdm(total=steps, file=sys.stdout, desc="work") as bar:
    for _ in range(steps):
        time.sleep(float(sys.argv[1]) / steps)
        bar.update()
print("MININTERVAL", os.environ.get("TQDM_MININTERVAL"))
"""


def bar_output(seconds: float, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.run(
        [sys.executable, "-c", BAR, str(seconds)],
        cwd=PROJECT_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_a_bar_shows_only_for_work_that_lasts_two_seconds():
    # In a terminal tqdm refreshes up to 10 times a second (its own default, as here).
    assert "work:" not in bar_output(0.5, TQDM_MININTERVAL="0.1")
    assert "work: 100%" in bar_output(2.8, TQDM_MININTERVAL="0.1")


def test_the_users_own_tqdm_setting_wins():
    assert "work: 100%" in bar_output(0.1, TQDM_DELAY="0")


def test_a_log_that_is_not_a_terminal_gets_a_bar_refresh_every_ten_seconds_at_most():
    # stderr is a pipe here: the console is a log (CI, Databricks, kubectl logs).
    assert "MININTERVAL 10" in bar_output(0.1)
    assert "MININTERVAL 0.5" in bar_output(0.1, TQDM_MININTERVAL="0.5")


@pytest.fixture
def configured():
    loggers = [logging.getLogger(name) for name in QUIETED]
    before = [list(logger.filters) for logger in loggers]
    configure_logging()
    configure_logging()  # a second call adds nothing
    yield logging.getLogger("mlflow.tracking.fluent")
    for logger, filters in zip(loggers, before, strict=True):
        logger.filters[:] = filters


def test_mlflows_repeated_info_lines_are_dropped_and_its_warnings_kept(configured, caplog):
    assert sum(isinstance(f, Quieted) for f in configured.filters) == 1
    with caplog.at_level(logging.INFO):
        configured.info("Active model is set to the logged model with ID: m-1")
        configured.info("Use `mlflow.set_active_model` to set the active model to a different one if needed.")
        configured.warning("Active model is set to the logged model with ID: m-2")
        configured.info("Experiment with name 'x' does not exist. Creating a new experiment.")
        logging.getLogger("mlflow.genai.utils.data_validation").info(
            "Testing model prediction with the first sample in the dataset."
        )
    assert [r.getMessage()[:24] for r in caplog.records] == ["Active model is set to t", "Experiment with name 'x'"]
    assert caplog.records[0].levelno == logging.WARNING


def test_transformers_warning_on_mlflows_clean_up_request_is_dropped(configured, caplog, tiny_model_dir: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    warned = logging.getLogger("transformers.tokenization_utils_tokenizers")

    def warnings() -> list[str]:
        caplog.clear()
        hf_logging.warning_once.cache_clear()  # transformers warns once per process
        with caplog.at_level(logging.WARNING):
            # What MLflow's transformers flavour asks of every chat answer it decodes.
            text = tokenizer.decode(tokenizer("Paris .")["input_ids"], clean_up_tokenization_spaces=True)
        assert text == "Paris ."  # transformers ignores the request for a BPE tokenizer
        return [r.getMessage() for r in caplog.records if "clean_up_tokenization_spaces" in r.getMessage()]

    assert warnings() == []
    (quieted,) = [f for f in warned.filters if isinstance(f, Quieted)]
    warned.removeFilter(quieted)
    try:
        assert len(warnings()) == 1  # transformers still warns; when it no longer does, drop the filter
    finally:
        warned.addFilter(quieted)


def test_main_and_the_step_processes_log_mlflows_warnings_only_while_a_step_runs(caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    projects = logging.getLogger("mlflow.projects")
    level = projects.level
    with caplog.at_level(logging.INFO, logger="mlflow.projects"):
        with quiet_projects():
            projects.info("=== Running command 'python steps/download.py' ===")
            projects.error("=== Run (ID 'abc') failed ===")
            # What the `mlflow run` process of the step, and the step's own process, start with.
            assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
        assert projects.level == logging.INFO
    assert [r.getMessage() for r in caplog.records] == ["=== Run (ID 'abc') failed ==="]
    assert projects.level == level
    assert "MLFLOW_LOGGING_LEVEL" not in os.environ


def test_a_users_own_mlflow_logging_level_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")
    with quiet_projects():
        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"


def test_mlflows_artifact_bar_is_drawn_on_tqdms_schedule_within_the_patch():
    """Canary of ``artifact_bars_honour_tqdm``: stock MLflow draws a one-file bar at once, whatever tqdm's delay."""
    from mlflow.utils.file_utils import ArtifactProgressBar

    def drawn() -> str:
        out = io.StringIO()
        with ArtifactProgressBar("Downloading artifacts", total=1, step=1, delay=60, file=out) as bar:
            bar.set_pbar()
            bar.update()
            assert bar.progress == 1
        return out.getvalue()

    assert "Downloading artifacts: 100%" in drawn()  # the upstream behaviour; when this fails, drop the patch
    with artifact_bars_honour_tqdm():
        assert drawn() == ""
    assert "Downloading artifacts: 100%" in drawn()


def test_the_builders_save_bar_is_drawn_on_tqdms_schedule_within_the_patch():
    """Canary of ``save_bar_described_quietly``: the builder still describes its save bar per tensor, and stock
    tqdm draws the bar on each description, whatever its delay."""
    for model_class in builder_model_classes():
        assert 'pbar.set_description(f"Saving {tensor.name}' in inspect.getsource(model_class.save_model)

    def drawn(bar_class: type) -> str:
        out = io.StringIO()
        with bar_class(total=2, delay=60, file=out) as bar:
            bar.update()
            bar.set_description("Saving model.embed_tokens.weight")
        return out.getvalue()

    assert "Saving model.embed_tokens.weight" in drawn(builder_modules("base")[0].tqdm)
    with save_bar_described_quietly():
        assert {m.tqdm.__name__ for m in builder_modules("base")} == {"DescribedQuietly"}
        assert drawn(builder_modules("base")[0].tqdm) == ""
    assert {m.tqdm.__name__ for m in builder_modules("base")} == {"tqdm"}


def test_what_mlflow_genai_evaluate_prints_goes_to_the_debug_log(capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="llmflow.evaluation.scoring"), _sequential_evaluation():
        print("✨ Evaluation completed.")
    assert "Evaluation completed" not in capsys.readouterr().out
    assert "✨ Evaluation completed." in caplog.text
