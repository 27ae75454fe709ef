"""Exceptions the pipeline raises on purpose.

Each message is one line that names the value and says what is accepted (or which step failed);
the step scripts print it without a traceback and exit with the error's ``exit_code``.
"""


class PipelineError(Exception):
    """Base class: a failure the pipeline explains in one line."""

    exit_code = 1


class InputError(PipelineError, ValueError):
    """A parameter, file or model the pipeline cannot accept."""

    exit_code = 2


class StepFailed(PipelineError):
    """A child step of ``main`` failed; the message names the step, its run and its error."""


class Cancelled(BaseException):
    """The process was asked to stop (SIGINT, SIGTERM): raised by the handler ``llmflow.cli`` installs.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way swallows it. The run
    it interrupts ends KILLED with the signal's name as its reason (``llmflow.tracking.runs.step_run``), and the
    process exits with 128 + the signal's number, as a shell reports a process the signal killed.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"cancelled by {self.signal_name}" + (f": {detail}" if detail else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def cancellation_in(exc: BaseException) -> Cancelled | None:
    """The ``Cancelled`` that ``exc`` is, or that was being handled when ``exc`` was raised (its ``__context__``
    chain): a clean-up that fails on the way out of a cancelled step does not make the cancellation a failure."""
    found: BaseException | None = exc
    while found is not None and not isinstance(found, Cancelled):
        found = found.__context__  # Python breaks a cycle when it sets a context, so this ends
    return found


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none: the reason in a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
