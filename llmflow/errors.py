"""Exceptions the pipeline raises for input it cannot accept.

Each message is one line that names the value and says what is accepted; the step scripts print it
without a traceback and exit with status 2.
"""


class InputError(ValueError):
    """A parameter, file or model the pipeline cannot accept."""
