"""The promote step: a passed champion copied into another registry (or name), with its card and alias.

Between two SQLite stores in this process, and between two ``mlflow server`` processes on loopback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from llmflow.errors import InputError
from llmflow.promote import PromoteOptions, promote
from llmflow.tracking.names import TAG_DOWNLOAD_RUN, TAG_HF_REPO, TAG_HF_SHA, TAG_PRECISION, TAG_STEP

LINEAGE = {TAG_HF_REPO: "local/tiny-phi3", TAG_HF_SHA: "sha256:abc", TAG_PRECISION: "int4", TAG_DOWNLOAD_RUN: "d1"}
REPORT = "**PASSED**: version 1 is now champion. all 1 criteria hold (no champion yet)\n\n# tiny-onnx version 1"


class Upper(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [text.upper() for text in model_input["prompt"]]


def _champion(name: str, status: str = "passed") -> str:
    """A registered version of a small pyfunc with lineage tags, a report as description, and ``champion``."""
    from llmflow.register import RegisterOptions, register

    with mlflow.start_run():
        mlflow.set_tags({TAG_STEP: "log_pyfunc", **LINEAGE})
        uri = mlflow.pyfunc.log_model(
            name="tiny-phi3-int4-cpu", python_model=Upper(), pip_requirements=["mlflow"], params={"precision": "int4"}
        ).model_uri
    version = register(RegisterOptions(model_uri=uri, registered_model_name=name)).version
    client = MlflowClient()
    client.set_model_version_tag(name, version, "validation_status", status)
    client.update_model_version(name, version, description=REPORT)
    client.set_registered_model_alias(name, "champion", version)
    return version


def _promote(name: str, target_uri: str, target_name: str):
    return promote(PromoteOptions(registered_model_name=name, target_registry_uri=target_uri, target_name=target_name))


def _check_copy(target_uri: str, target_name: str, source: MlflowClient, name: str, version: str) -> None:
    target = MlflowClient(tracking_uri=target_uri, registry_uri=target_uri)
    copy = target.get_model_version_by_alias(target_name, "champion")
    original = source.get_model_version(name, version)
    assert {k: v for k, v in copy.tags.items() if k != "llmflow_promoted_from"} == original.tags
    assert copy.tags["llmflow_promoted_from"].endswith(f"#models:/{name}/{version}")
    assert copy.description == REPORT
    assert "models:/" in target.get_registered_model(target_name).description  # the card came along
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(target_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{target_name}@champion")
        assert model.predict(pd.DataFrame({"prompt": ["madrid"]})) == ["MADRID"]
    finally:
        mlflow.set_tracking_uri(previous)


def test_promote_between_two_sqlite_stores(tracking_uri: str, tmp_path: Path, _empty_store: Path):
    version = _champion("tiny-onnx")
    shutil.copyfile(_empty_store, tmp_path / "prod.db")
    prod = f"sqlite:///{tmp_path / 'prod.db'}"
    # The production store's experiment keeps its artifacts in this test's folder.
    MlflowClient(tracking_uri=prod).create_experiment("llmflow-promoted", (tmp_path / "prod-artifacts").as_uri())

    first = _promote("tiny-onnx", prod, "phi3-prod")
    again = _promote("tiny-onnx", prod, "phi3-prod")

    assert (first.copied, first.target_version) == (True, "1")
    assert (again.copied, again.target_version) == (False, "1")  # the same champion is copied once
    _check_copy(prod, "phi3-prod", MlflowClient(), "tiny-onnx", version)
    run = mlflow.get_run(first.run_id)
    assert run.data.tags["llmflow.promote_target"].endswith("#models:/phi3-prod/1")
    # Within one registry it is MLflow's copy_model_version: a second name in the same store.
    inside = _promote("tiny-onnx", "same", "tiny-onnx-prod")
    assert str(MlflowClient().get_model_version_by_alias("tiny-onnx-prod", "champion").version) == inside.target_version
    assert MlflowClient().get_model_version("tiny-onnx-prod", inside.target_version).description == REPORT


@pytest.mark.parametrize("status", ["failed", "pending"])
def test_a_version_that_did_not_pass_is_never_copied(tracking_uri: str, tmp_path: Path, _empty_store, status):
    _champion("tiny-onnx", status=status)
    shutil.copyfile(_empty_store, tmp_path / "prod.db")
    prod = f"sqlite:///{tmp_path / 'prod.db'}"
    with pytest.raises(InputError, match=rf"has validation_status '{status}'; only a version whose"):
        _promote("tiny-onnx", prod, "phi3-prod")
    assert MlflowClient(tracking_uri=prod, registry_uri=prod).search_registered_models() == []


def test_no_champion_is_one_line(tracking_uri: str):
    MlflowClient().create_registered_model("empty")
    with pytest.raises(InputError, match=r"^registered model 'empty' has no 'champion' alias"):
        _promote("empty", "same", "empty-prod")


def test_unity_catalog_gets_its_own_tag_form_and_the_long_values_in_the_description():
    from llmflow.promote import target_card

    tags = {"llmflow.hf_repo_id": "local/tiny-phi3", "validation_status": "passed", "llmflow.note": "x" * 1500}
    fitted, description = target_card("databricks-uc", "main.models.phi3", tags, REPORT)
    assert fitted["llmflow_hf_repo_id"] == "local/tiny-phi3" and fitted["validation_status"] == "passed"
    assert all("." not in key and len(value) <= 1000 for key, value in fitted.items())
    assert description.startswith(REPORT) and "x" * 1500 in description
    assert target_card("http://prod:5000", "phi3-prod", tags, REPORT) == (tags, REPORT)
    with pytest.raises(InputError, match=r"^target_name 'phi3-prod' is not accepted for databricks-uc"):
        target_card("databricks-uc", "phi3-prod", tags, REPORT)
