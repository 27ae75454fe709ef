"""The register step: lineage tags, the challenger alias, idempotence, bad input."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from llmflow.errors import InputError
from llmflow.register import RegisterOptions, register
from llmflow.tracking.names import (
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_ONNX_SOURCE,
    TAG_PRECISION,
    TAG_STEP,
    registry_key,
)
from llmflow.tracking.unity_catalog import MAX_VALUE_LENGTH, tag_problems


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return list(model_input["prompt"])


def _logged_model(tags: dict[str, str]) -> str:
    with mlflow.start_run():
        mlflow.set_tags({TAG_STEP: "log_pyfunc", **tags})
        return mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"]).model_uri


LINEAGE = {TAG_HF_REPO: "local/tiny-phi3", TAG_HF_SHA: "sha256:abc", TAG_PRECISION: "int4", TAG_DOWNLOAD_RUN: "d1"}


def test_register_tags_lineage_and_sets_challenger(tracking_uri: str):
    uri = _logged_model({**LINEAGE, "llmflow.seed": "0"})
    result = register(RegisterOptions(model_uri=uri, registered_model_name="tiny-onnx"))
    client = MlflowClient()
    version = client.get_model_version("tiny-onnx", result.version)
    assert result.created and result.version == "1"
    # Registry keys: the run tags' keys with `_` for `.`, the form Unity Catalog (and every other registry) takes.
    assert {registry_key(key): value for key, value in LINEAGE.items()}.items() <= version.tags.items()
    assert tag_problems(version.tags, "tiny-onnx/1") == []
    assert version.tags["llmflow_logged_by_step"] == "log_pyfunc"
    assert version.tags["llmflow_git_commit"]
    # The lineage people read but do not filter on is the description, not more tags.
    assert not {"llmflow_seed", "llmflow_git_tree_clean", "llmflow_environment_uri"} & set(version.tags)
    assert version.description.startswith("## Lineage")
    assert f"| logged model | `{uri.removeprefix('models:/')}` |" in version.description
    assert "| seed | `0` |" in version.description and "/environment/pip-freeze.txt` |" in version.description
    assert str(client.get_model_version_by_alias("tiny-onnx", "challenger").version) == "1"
    assert "champion" not in client.get_registered_model("tiny-onnx").aliases
    assert mlflow.get_run(result.run_id).data.tags["llmflow.registered_model_version"] == "1"


def test_a_lineage_value_too_long_for_a_registry_tag_is_cut_and_kept_whole_in_the_description(tracking_uri: str):
    folder = "/mnt/models/" + "/".join(["a-very-deep-folder"] * 80)  # an ONNX source given as a local folder
    assert len(folder) > MAX_VALUE_LENGTH
    uri = _logged_model({**LINEAGE, TAG_ONNX_SOURCE: folder})
    result = register(RegisterOptions(model_uri=uri, registered_model_name="tiny-onnx"))
    version = MlflowClient().get_model_version("tiny-onnx", result.version)
    value = version.tags[registry_key(TAG_ONNX_SOURCE)]
    assert len(value) == MAX_VALUE_LENGTH and value.endswith("…") and folder.startswith(value[:-1])
    assert tag_problems(version.tags, "tiny-onnx/1") == []
    assert f"| {TAG_ONNX_SOURCE} | `{folder}` |" in version.description


def test_registering_the_same_model_twice_keeps_one_version(tracking_uri: str):
    uri = _logged_model(LINEAGE)
    first = register(RegisterOptions(model_uri=uri, registered_model_name="tiny-onnx"))
    second = register(RegisterOptions(model_uri=uri, registered_model_name="tiny-onnx"))
    assert (first.version, second.version) == ("1", "1")
    assert not second.created
    assert len(MlflowClient().search_model_versions("name='tiny-onnx'")) == 1


def test_a_new_model_moves_challenger_only(tracking_uri: str):
    client = MlflowClient()
    register(RegisterOptions(model_uri=_logged_model(LINEAGE), registered_model_name="tiny-onnx"))
    client.set_registered_model_alias("tiny-onnx", "champion", "1")
    result = register(RegisterOptions(model_uri=_logged_model(LINEAGE), registered_model_name="tiny-onnx"))
    assert result.version == "2"
    assert str(client.get_model_version_by_alias("tiny-onnx", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("tiny-onnx", "champion").version) == "1"


@pytest.mark.parametrize(
    ("uri", "name", "message"),
    [
        ("runs:/abc/model", "ok-name", "is not a logged model URI"),
        ("models:/m-0123456789abcdef", "ok-name", "not found in tracking store"),
        ("models:/m-0123", "bad name!", "registered model name 'bad name!' is not accepted"),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(tracking_uri: str, uri: str, name: str, message: str):
    with pytest.raises(InputError, match=message) as excinfo:
        register(RegisterOptions(model_uri=uri, registered_model_name=name))
    assert "\n" not in str(excinfo.value)
    assert MlflowClient().search_registered_models() == []


def test_the_version_is_linked_to_its_logged_model_and_the_name_has_a_card(tracking_uri: str):
    import json

    from llmflow.tracking.model_cards import version_model_id

    uri = _logged_model({**LINEAGE, TAG_EXECUTION_PROVIDER: "cpu"})
    result = register(RegisterOptions(model_uri=uri, registered_model_name="tiny-onnx"))
    client = MlflowClient()
    version = client.get_model_version("tiny-onnx", result.version)
    model_id = uri.removeprefix("models:/")
    # The version leads to its LoggedModel, and the LoggedModel names the version.
    assert version.source == uri
    assert version_model_id(version) == model_id
    assert json.loads(mlflow.get_logged_model(model_id).tags["mlflow.modelVersions"]) == [
        {"name": "tiny-onnx", "version": int(result.version)}
    ]
    # The registered model says what it is, where it came from and how to serve it.
    description = client.get_registered_model("tiny-onnx").description
    assert "`local/tiny-phi3`" in description and "`sha256:abc`" in description
    assert "ONNX int4 export for cpu" in description
    assert 'mlflow models serve -m "models:/tiny-onnx@champion"' in description
    # Every tag fits the 1,000 characters Unity Catalog allows.
    assert all(len(value) <= 1000 for value in version.tags.values())
