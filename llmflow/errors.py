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


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none: the reason in a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
