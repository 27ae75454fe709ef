"""The download step: local folders, the hub path up to the network call, and bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest

from llmflow import download as dl
from llmflow.download import DownloadOptions
from llmflow.errors import InputError
from llmflow.export.architectures import supported_architectures
from llmflow.sources.folder import model_dir_from_run
from llmflow.sources.hub import is_local_reference
from llmflow.sources.manifest import build_manifest, manifest_digest
from llmflow.tracking.names import TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE


def test_local_folder_is_content_hashed_and_logged(tiny_model_dir: Path, tracking_uri: str):
    result = dl.download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "download"  # a step called directly is named after itself
    assert run.data.tags[TAG_SOURCE] == "local"
    expected = build_manifest(tiny_model_dir)
    assert run.data.tags[TAG_HF_SHA] == "sha256:" + manifest_digest(expected)
    manifest = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/manifest.json")
    assert manifest["files"] == expected
    assert {f["file"] for f in expected} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert run.data.metrics["download_bytes"] == sum(f["size"] for f in expected)
    assert run.data.metrics["download_files"] == len(expected)


def test_model_dir_from_run_returns_verified_copy(tiny_model_dir: Path, tracking_uri: str, tmp_path: Path):
    result = dl.download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    copy = model_dir_from_run(result.run_id, dst=tmp_path / "copy")
    assert copy != tiny_model_dir
    assert build_manifest(copy) == build_manifest(tiny_model_dir)


def test_a_local_artifact_store_is_read_in_place(tiny_model_dir: Path, tracking_uri: str, tmp_path: Path):
    """No second copy of the weights: the folder returned is the run's own ``model/`` artifact folder."""
    result = dl.download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    artifact_dir = Path(mlflow.get_run(result.run_id).info.artifact_uri.removeprefix("file://")) / "model"
    assert model_dir_from_run(result.run_id, dst=tmp_path / "copy") == artifact_dir
    assert not (tmp_path / "copy").exists()


def test_tampered_artifact_is_refused(tiny_model_dir: Path, tracking_uri: str, tmp_path: Path):
    result = dl.download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    artifact_dir = Path(mlflow.get_run(result.run_id).info.artifact_uri.removeprefix("file://")) / "model"
    (artifact_dir / "config.json").write_text("{}")
    with pytest.raises(InputError, match="config.json.*does not match its manifest"):
        model_dir_from_run(result.run_id, dst=tmp_path / "copy")


def test_missing_local_folder_names_it(tracking_uri: str, tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=f"local model folder '{missing}' not found"):
        dl.download(DownloadOptions(model=str(missing), revision="main"))
    failed = mlflow.search_runs(output_format="list")[0]
    assert failed.info.status == "FAILED"
    assert "not found" in failed.data.tags["llmflow.error"]


def test_unreadable_weights_are_named_with_the_fix(
    tiny_model_dir: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """As another user sees a folder saved by root (model.safetensors is 0600); these tests run as root, for whom
    every file is readable, so ``os.access`` answers as it would for that user."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "mounted")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path).name != "model.safetensors" and real_access(path, mode)
    )
    with pytest.raises(InputError, match=r"'.*mounted': model.safetensors not readable by this user.*chmod -R a\+rX"):
        dl.download(DownloadOptions(model=str(folder), revision="main"))
    failed = mlflow.search_runs(output_format="list")[0]
    assert failed.info.status == "FAILED"
    assert "not readable" in failed.data.tags["llmflow.error"]


def test_unsupported_architecture_fails_in_download(tiny_model_dir: Path, tracking_uri: str, tmp_path: Path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="architecture 'BertForMaskedLM'.*not supported.*Phi3ForCausalLM"):
        dl.download(DownloadOptions(model=str(folder), revision="main"))


def test_supported_architectures_come_from_the_builder():
    supported = supported_architectures()
    assert {"Phi3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"} <= supported
    assert "BertForMaskedLM" not in supported


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("microsoft/Phi-3-mini-4k-instruct", False),
        ("gpt2", False),
        ("./models/phi", True),
        ("/abs/path", True),
        ("~/phi", True),
        ("not a repo id", True),
    ],
)
def test_local_or_hub_reference(value: str, local: bool):
    assert is_local_reference(value) is local


class _FakeInfo:
    sha = "a" * 40
    config = {"architectures": ["Phi3ForCausalLM"]}


def test_hub_path_pins_the_resolved_commit(tiny_model_dir: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch):
    """Everything up to the network: the revision resolves to a sha, the snapshot is fetched by that sha."""
    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def model_info(self, repo_id: str, revision: str) -> _FakeInfo:
            calls["model_info"] = (repo_id, revision)
            return _FakeInfo()

    def fake_snapshot(repo_id: str, revision: str, allow_patterns: list[str], ignore_patterns: list[str], token):
        calls["snapshot"] = (repo_id, revision, tuple(allow_patterns), tuple(ignore_patterns))
        return str(tiny_model_dir)

    import huggingface_hub

    # The online path: HF_HUB_OFFLINE (set for every test) would send download to the local cache instead.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_marker")
    result = dl.download(DownloadOptions(model="microsoft/Phi-3-mini-4k-instruct", revision="main"))

    assert calls["model_info"] == ("microsoft/Phi-3-mini-4k-instruct", "main")
    assert calls["token"] == "hf_secret_marker"
    repo, revision, allow, ignore = calls["snapshot"]
    assert (repo, revision) == ("microsoft/Phi-3-mini-4k-instruct", "a" * 40)
    assert "*.safetensors" in allow and "*.bin" not in allow and "*.onnx" not in allow
    assert "*/*" in ignore
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[TAG_SOURCE] == "hub"
    assert run.data.tags[TAG_HF_REPO] == "microsoft/Phi-3-mini-4k-instruct"
    assert run.data.tags[TAG_HF_SHA] == "a" * 40
    assert "hf_secret_marker" not in json.dumps([run.data.params, run.data.tags])
    # A hub download logs only the manifest (and, as every step, the environment), not a copy of the weights.
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)] == ["environment", "manifest.json"]


def test_unknown_hub_model_is_one_clear_line(tracking_uri: str, monkeypatch: pytest.MonkeyPatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/nobody/nothing"))

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            pass

        def model_info(self, repo_id: str, revision: str) -> None:
            raise errors.RepositoryNotFoundError("404 Client Error. Repository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    with pytest.raises(InputError) as excinfo:
        dl.download(DownloadOptions(model="nobody/nothing", revision="main"))
    message = str(excinfo.value)
    assert "\n" not in message
    assert "model 'nobody/nothing' not found on the Hugging Face Hub" in message


def test_offline_hub_lookup_says_so(tracking_uri: str):
    with pytest.raises(InputError, match="HF_HUB_OFFLINE is set"):
        dl.download(DownloadOptions(model="microsoft/Phi-3-mini-4k-instruct", revision="main"))


def test_without_weights_only_configs_and_tokenizer_are_fetched(tiny_model_dir: Path, tracking_uri: str, tmp_path):
    from transformers import AutoTokenizer

    result = dl.download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    copy = model_dir_from_run(result.run_id, dst=tmp_path / "light", weights=False)
    names = {p.name for p in copy.iterdir()}
    assert "model.safetensors" not in names
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert AutoTokenizer.from_pretrained(copy).chat_template
