"""What the registry holds, said to a person who named something it does not hold."""

from __future__ import annotations

import difflib
import re

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError

# How many registered names a search reads to suggest one (one page of MLflow's search).
SEARCHED_NAMES = 1000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]{0,254}$")


def validate_registered_model_name(name: str) -> None:
    """Raise ``InputError`` unless ``name`` is a usable registered model name."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(
            f"registered model name '{name}' is not accepted; use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 255 characters)"
        )


def check_registered_model_name(_: str, value: object) -> None:
    """The options check of a registered model name (see ``validate_registered_model_name``)."""
    validate_registered_model_name(value)  # type: ignore[arg-type]


def close_names(client: MlflowClient, name: str) -> list[str]:
    """Registered names near ``name``: those that extend it (``tiny-phi3`` -> ``tiny-phi3-onnx``), then look alike."""
    try:
        names = [model.name for model in client.search_registered_models(max_results=SEARCHED_NAMES)]
    except MlflowException:
        return []
    extending = sorted(other for other in names if other.startswith(f"{name}-"))
    alike = difflib.get_close_matches(name, names, n=3)
    return list(dict.fromkeys(extending + alike))[:3]


def missing_model(client: MlflowClient, name: str, expected: str = "", where: str = "") -> InputError:
    """``InputError`` for a registered model ``name`` that the registry does not hold, with the names close to it.

    ``where`` names the registry (default: the tracking store, by its URI)."""
    where = where or f"tracking store '{mlflow.get_tracking_uri()}'"
    message = f"registered model '{name}' not found in {where}"
    close = close_names(client, name)
    if close:
        message += "; did you mean " + " or ".join(f"'{other}'" for other in close) + "?"
    elif expected:
        message += f"; {expected}"
    return InputError(message)
