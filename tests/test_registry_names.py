"""A registered name that is not there is refused with the registered names close to it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from llmflow.errors import InputError
from llmflow.evaluation.lineage import registered_aliases
from llmflow.evaluation.promotion import roll_back
from llmflow.promote import champion_version
from llmflow.tracking.registry import close_names


def test_the_base_name_main_takes_suggests_the_flavours_it_registered(tracking_uri: str):
    client = MlflowClient()
    for name in ("tiny-phi3-onnx", "tiny-phi3-transformers", "other"):
        client.create_registered_model(name)
    assert close_names(client, "tiny-phi3") == ["tiny-phi3-onnx", "tiny-phi3-transformers"]
    assert close_names(client, "tiny-phi3-onx")[0] == "tiny-phi3-onnx"
    assert close_names(client, "nothing-like-it") == []
    with pytest.raises(
        InputError,
        match=r"^registered model 'tiny-phi3' not found in tracking store '[^']+'; "
        r"did you mean 'tiny-phi3-onnx' or 'tiny-phi3-transformers'\?$",
    ):
        registered_aliases(client, "tiny-phi3")
    with pytest.raises(InputError, match=r"not found in tracking store '[^']+'; did you mean 'tiny-phi3-onnx' or "):
        roll_back(client, "tiny-phi3-onx", "run")
    with pytest.raises(InputError, match=r"^registered model 'tiny-phi3' not found in registry '[^']+'; did you"):
        champion_version(client, "tiny-phi3")
    # A name that is there but has no champion is still told so.
    with pytest.raises(InputError, match=r"^registered model 'other' has no 'champion' alias"):
        champion_version(client, "other")
    # Nothing close: the hint of the step.
    with pytest.raises(InputError, match=r"; expected a name that the register step wrote$"):
        registered_aliases(client, "zzz")
