"""The one command-line layer every step shares: ``steps/<name>.py`` is ``main = step_main(<step function>)``.

A step function takes one argument, ``options``, annotated with its options class (``llmflow.options``);
the parser is built from that class, and its first docstring line is the step's description. A step's
``PipelineError`` ends the process with one line on stderr and its exit status, never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, get_type_hints

from llmflow.errors import Cancelled, PipelineError, cancellation_in, first_line
from llmflow.options import StepOptions, parse
from llmflow.patches.mlflow import artifact_bars_honour_tqdm
from llmflow.tracking import task_values

logger = logging.getLogger(__name__)


def options_class(step: Callable[..., Any]) -> type[StepOptions]:
    """The options class a step function takes (its ``options`` parameter's annotation)."""
    return get_type_hints(step)["options"]


# Log lines a person does not need, repeated for every model evaluated, by logger: the highest level dropped and the
# messages' beginnings. MLflow's "Active model is set to the logged model with ID ..." and its hint on
# set_active_model (mlflow.genai.evaluate sets the model it is given, and the step's own log names it), and its
# "Testing model prediction with the first sample" (a check that stays on). And transformers' warning that it ignores
# clean_up_tokenization_spaces=True for a BPE tokenizer: MLflow 3.17's transformers flavour asks for it in every chat
# answer it decodes (llm_inference_utils._get_completions_text), transformers 5 rightly ignores it, and no setting of
# the model can stop the request.
QUIETED: dict[str, tuple[int, tuple[str, ...]]] = {
    "mlflow.tracking.fluent": (logging.INFO, ("Active model is set to ", "Use `mlflow.set_active_model`")),
    "mlflow.genai.utils.data_validation": (logging.INFO, ("Testing model prediction with the first sample",)),
    "transformers.tokenization_utils_tokenizers": (
        logging.WARNING,
        ("Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",),
    ),
}


class Quieted(logging.Filter):
    """Drops records up to ``level`` whose message starts with one of ``prefixes``; higher levels always pass."""

    def __init__(self, level: int, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.level, self.prefixes = level, prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > self.level or not record.getMessage().startswith(self.prefixes)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "onnxruntime.quantization"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, (level, prefixes) in QUIETED.items():
        quieted = logging.getLogger(name)
        if not any(isinstance(f, Quieted) for f in quieted.filters):
            quieted.addFilter(Quieted(level, prefixes))


# Calls a signal must not interrupt: a tracking or registry store call stopped between its query and the end of its
# fetch leaves the SQLite cursor alive (the traceback keeps its frames), holding the database's shared lock, and the
# step's own write of its KILLED status then fails with "database is locked"; a temporary folder's removal stopped
# half way leaves the folder behind; an artifact download stopped in the calling thread leaves MLflow's worker threads
# writing into the folder that the clean-up then removes (rmtree fails "Directory not empty", an OSError that replaced
# the cancellation: the run ended FAILED, CI's test_cancel). The signal waits for the call to end.
DEFERRED_IN = (
    "sqlalchemy",
    "sqlite3",
    "mlflow.store.tracking",
    "mlflow.store.model_registry",
    "mlflow.store.db",
    "mlflow.store.artifact",
    "tempfile",
)
RECHECK_SECONDS = 0.05
_pending: list[int] = []


def in_store_call(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a frame that called it runs code of ``DEFERRED_IN``."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(DEFERRED_IN):
            return True
        frame = frame.f_back
    return False


def _raise_cancelled(signum: int, frame: FrameType | None) -> None:
    # One signal starts the cleanup; a second (Ctrl-C pressed twice, or the SIGTERM that `mlflow run` sends after
    # the terminal's SIGINT) must not interrupt it. What does not stop in time gets SIGKILL from whoever started it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _pending[:] = [signum]
    _raise_when_outside_store_calls(signal.SIGALRM, frame)


def _raise_when_outside_store_calls(_alarm: int, frame: FrameType | None) -> None:
    if not _pending:
        return
    if in_store_call(frame):
        signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)  # look again once the call has moved on
        return
    raise Cancelled(_pending.pop())


def cancel_on_signals() -> None:
    """Turn SIGINT and SIGTERM into ``Cancelled``, so the step ends its run KILLED and cleans up on the way out.

    SIGTERM is how Databricks and Kubernetes cancel (Python's default dies on it without ending the run, and as a
    container's PID 1 Python ignores it altogether); SIGINT is Ctrl-C. Only the main thread can install handlers.
    A signal that lands inside a tracking store call is raised once that call has returned (``DEFERRED_IN``).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_cancelled)
    signal.signal(signal.SIGALRM, _raise_when_outside_store_calls)


def run_step(step: Callable[..., Any], argv: list[str] | None = None, entry_point: str | None = None) -> None:
    """Parse arguments into the step's options, call ``step(options)``, and turn a ``PipelineError`` into one
    line and its exit code. ``entry_point`` defaults to the step function's name."""
    cls = options_class(step)
    name = entry_point or step.__name__
    description = (cls.__doc__ or name).strip().splitlines()[0]
    options = parse(cls, name, description, argv)
    configure_logging()
    task_values.hf_token_from_secret()
    cancel_on_signals()
    try:
        with artifact_bars_honour_tqdm():
            result = step(options)
    except BaseException as exc:
        cancelled = cancellation_in(exc)
        if cancelled is not None:
            _exit_cancelled(name, cancelled, exc)
        if not isinstance(exc, PipelineError):
            raise
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    # What a later task of a Databricks job reads as {{tasks.<step>.values.<name>}}.
    task_values.publish(result)


def _exit_cancelled(name: str, cancelled: Cancelled, raised: BaseException) -> NoReturn:
    """End a cancelled step's process with one line and 128 + the signal's number. ``raised`` is what reached the
    step's top: the ``Cancelled`` itself, or an error of a clean-up on its way out (its run still ends KILLED)."""
    print(f"error: {name}: {cancelled}", file=sys.stderr)
    if raised is not cancelled:
        logger.warning("%s: a clean-up after the cancellation failed: %s", name, first_line(raised))
    # Its run is ended. Leave now: the interpreter's exit joins the worker threads a library started (an artifact
    # download's pool, a progress bar's monitor), which held a step cancelled early in its export for minutes.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(cancelled.exit_code)


def step_main(
    step: Callable[..., Any], entry_point: str | None = None, module: str | None = None
) -> Callable[[list[str] | None], None]:
    """The ``main(argv=None)`` of a script under ``steps/``: ``run_step`` of ``step``. Given the script's ``__name__``
    as ``module``, it also runs it there and then when that is ``"__main__"`` (the file is run, not imported)."""

    def main(argv: list[str] | None = None) -> None:
        run_step(step, argv, entry_point)

    if module == "__main__":
        main()
    return main
