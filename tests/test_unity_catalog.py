"""Unity Catalog, offline: the limits on tags (llmflow.tracking.unity_catalog) and MLflow's own UC signature check.

No workspace is reached. The signature check is MLflow's ``UcModelRegistryStore._validate_model_signature``,
which ``mlflow.register_model`` runs on the downloaded model folder before it registers into Unity Catalog.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.store._unity_catalog.registry.rest_store import UcModelRegistryStore

from llmflow.download import DownloadOptions
from llmflow.tracking.names import TAG_EVALUATE_RUN, registry_key, registry_tag
from llmflow.tracking.unity_catalog import MAX_VALUE_LENGTH, is_three_level, tag_problems, uc_key, uc_tags


def test_tag_problems_names_each_breach():
    tags = {"llmflow.decision_reason": "x" * 4900, "ok_key": "fine", "k" * 300: "v"}
    problems = tag_problems(tags, "m/1")
    assert any("'llmflow.decision_reason' has ." in p for p in problems)
    assert any("value has 4900 characters; at most 1000" in p for p in problems)
    assert any("has 300 characters; at most 255" in p for p in problems)
    assert not any("ok_key" in p for p in problems)
    assert tag_problems({f"t{i}": "v" for i in range(51)}, "m/1") == [
        "m/1: 51 tags; Unity Catalog allows at most 50 on one object"
    ]


def test_uc_tags_fit_and_keep_what_was_cut_for_the_description():
    tags = {"llmflow.decision_reason": "why " * 1500, "llmflow.hf_repo_id": "microsoft/Phi-3-mini-4k-instruct"}
    fitted = uc_tags(tags)
    assert tag_problems(fitted.tags, "m/1") == []
    assert fitted.tags["llmflow_hf_repo_id"] == "microsoft/Phi-3-mini-4k-instruct"
    assert len(fitted.tags["llmflow_decision_reason"]) == MAX_VALUE_LENGTH
    assert fitted.cut == {"llmflow.decision_reason": tags["llmflow.decision_reason"]}
    assert uc_key("a.b-c=d/e:f,g") == "a_b_c_d_e_f_g"
    with pytest.raises(ValueError, match="same Unity Catalog key"):
        uc_tags({"a.b": "1", "a_b": "2"})


def test_three_level_names():
    assert is_three_level("main.llmflow.phi3_mini_4k_instruct_onnx")
    assert not is_three_level("phi3-mini-4k-instruct-onnx")
    assert not is_three_level("main.llmflow")


# --- signatures, on the logged model folders ----------------------------------------------------------


def _uc_signature_check(model_dir: Path) -> None:
    # The check reads only the folder; it needs no workspace, so no store is built.
    UcModelRegistryStore._validate_model_signature(None, str(model_dir))


@pytest.mark.integration
def test_both_logged_models_pass_mlflows_unity_catalog_signature_check(
    logged_onnx_model: tuple[str, str], tiny_model_dir: Path, tracking_uri: str, tmp_path: Path
):
    from llmflow.download import download
    from llmflow.log_transformers import LogTransformersOptions, log_transformers

    store, onnx_uri = logged_onnx_model
    mlflow.set_tracking_uri(store)
    onnx_dir = Path(mlflow.artifacts.download_artifacts(onnx_uri, dst_path=str(tmp_path / "onnx")))
    mlflow.set_tracking_uri(tracking_uri)
    download_run_id = download(DownloadOptions(model=str(tiny_model_dir))).run_id
    options = LogTransformersOptions(download_run_id=download_run_id, max_new_tokens=16)
    transformers_uri = log_transformers(options).model_uri
    transformers_dir = Path(mlflow.artifacts.download_artifacts(transformers_uri, dst_path=str(tmp_path / "tf")))
    for model_dir in (onnx_dir, transformers_dir):
        _uc_signature_check(model_dir)
        outputs = yaml.safe_load((model_dir / "MLmodel").read_text())["signature"]["outputs"]
        assert "usage" in outputs and "choices" in outputs
    # The check can fail: the same ONNX folder with its outputs removed is refused, as before this change.
    stripped = shutil.copytree(onnx_dir, tmp_path / "no-outputs")
    mlmodel = yaml.safe_load((stripped / "MLmodel").read_text())
    del mlmodel["signature"]["outputs"]
    (stripped / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(MlflowException, match="signature that includes only inputs"):
        _uc_signature_check(stripped)


# --- every tag a main run writes on registry objects -------------------------------------------------


def test_registry_keys_are_the_run_keys_in_unity_catalogs_form():
    assert registry_key(TAG_EVALUATE_RUN) == "llmflow_evaluate_run_id"
    assert tag_problems({registry_key(TAG_EVALUATE_RUN): "r"}, "m/1") == []
    assert registry_tag({"llmflow_evaluate_run_id": "r"}, TAG_EVALUATE_RUN) == "r"
    # Only the registry key is read: a run key on a version is not this project's.
    assert registry_tag({TAG_EVALUATE_RUN: "r"}, TAG_EVALUATE_RUN) is None
