"""The Hub path for real and offline: huggingface_hub itself (no fakes) reads a seeded cache under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import pytest

from llmflow import download as dl
from llmflow.download import DownloadOptions
from llmflow.errors import InputError
from llmflow.sources.folder import model_dir_from_run
from llmflow.sources.hf_cache import DEFAULT_REPO, seed_cache
from llmflow.tracking.names import TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hf_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    sha = seed_cache(cache, tiny_model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache, sha


def test_default_model_resolves_main_to_the_cached_sha_offline(hf_cache: tuple[Path, str], tracking_uri: str):
    cache, sha = hf_cache
    result = dl.download(DownloadOptions(model=DEFAULT_REPO, revision="main"))
    run = mlflow.get_run(result.run_id)
    assert (run.data.tags[TAG_SOURCE], run.data.tags[TAG_HF_REPO], run.data.tags[TAG_HF_SHA]) == (
        "hub",
        DEFAULT_REPO,
        sha,
    )
    assert result.model_dir == cache / "models--microsoft--Phi-3-mini-4k-instruct" / "snapshots" / sha
    # Later steps find the same snapshot by the pinned sha, without the network.
    assert model_dir_from_run(result.run_id) == result.model_dir


def test_a_revision_not_in_the_cache_is_one_line_naming_repo_and_revision(hf_cache, tracking_uri: str):
    with pytest.raises(InputError) as error:
        dl.download(DownloadOptions(model=DEFAULT_REPO, revision="v2"))
    message = str(error.value)
    assert "\n" not in message
    assert f"model '{DEFAULT_REPO}' at revision 'v2' is not in the Hugging Face cache" in message


def test_a_repo_not_in_the_cache_is_one_line(hf_cache, tracking_uri: str):
    with pytest.raises(InputError, match="model 'nobody/nothing' at revision 'main' is not in the Hugging Face cache"):
        dl.download(DownloadOptions(model="nobody/nothing", revision="main"))


@pytest.mark.e2e
def test_mlflow_run_download_with_defaults_offline(tmp_path: Path, tiny_model_dir: Path):
    """``mlflow run . -e download`` with no parameters, as a user on an air-gapped machine runs it."""
    sha = seed_cache(tmp_path / "hf" / "hub", tiny_model_dir)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    subprocess.run(
        ["mlflow", "run", ".", "-e", "download", "--env-manager", "local"], cwd=PROJECT_ROOT, env=env, check=True
    )
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_HF_SHA] == sha
    manifest = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="manifest.json")).read_text()
    )
    assert manifest["commit_sha"] == sha
    mlflow.set_tracking_uri(None)


def _logged_files(model_uri: str) -> dict[str, int]:
    root = Path(mlflow.artifacts.download_artifacts(model_uri))
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_save_pretrained_false_logs_a_reference_to_the_pinned_commit_that_loads_offline(
    hf_cache: tuple[Path, str], tracking_uri: str
):
    import yaml

    from llmflow.log_transformers import LogTransformersOptions, log_transformers
    from llmflow.tracking.names import TAG_TRANSFORMERS_WEIGHTS

    _, sha = hf_cache
    run_id = dl.download(DownloadOptions(model=DEFAULT_REPO, revision="main")).run_id
    stored = log_transformers(LogTransformersOptions(download_run_id=run_id, max_new_tokens=8))
    reference = log_transformers(
        LogTransformersOptions(download_run_id=run_id, max_new_tokens=8, save_pretrained=False)
    )
    assert mlflow.get_run(reference.run_id).data.tags[TAG_TRANSFORMERS_WEIGHTS] == "hub reference"
    assert mlflow.get_run(stored.run_id).data.tags[TAG_TRANSFORMERS_WEIGHTS] == "stored"

    stored_files, reference_files = _logged_files(stored.model_uri), _logged_files(reference.model_uri)
    weights = sum(size for name, size in stored_files.items() if name.endswith(".safetensors"))
    assert weights > 0 and not [name for name in reference_files if name.endswith(".safetensors")]
    assert sum(reference_files.values()) < sum(stored_files.values()) - weights + 1
    print(f"\nlogged model: {sum(stored_files.values())} bytes stored, {sum(reference_files.values())} as a reference")
    flavor = yaml.safe_load((Path(mlflow.artifacts.download_artifacts(reference.model_uri)) / "MLmodel").read_text())
    transformers_flavor = flavor["flavors"]["transformers"]
    # The commit this pipeline downloaded, not one asked of the Hub when logging.
    assert (transformers_flavor["source_model_name"], transformers_flavor["source_model_revision"]) == (
        DEFAULT_REPO,
        sha,
    )

    # Loaded with HF_HUB_OFFLINE, from the cache: it answers as the stored copy does.
    request = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 8}
    answers = [mlflow.pyfunc.load_model(m.model_uri).predict(request) for m in (stored, reference)]
    assert [a[0]["choices"][0]["message"]["content"] for a in answers] == ["Madrid", "Madrid"]


def test_save_pretrained_false_refuses_a_local_folder_in_one_line(tiny_model_dir: Path, tracking_uri: str):
    from llmflow.log_transformers import LogTransformersOptions, log_transformers

    run_id = dl.download(DownloadOptions(model=str(tiny_model_dir))).run_id
    with pytest.raises(
        InputError, match=r"^save_pretrained 'false' needs a hub model, and download run '.*' is a local"
    ):
        log_transformers(LogTransformersOptions(download_run_id=run_id, save_pretrained=False))


def test_a_linked_seed_shares_the_files_bytes_and_gives_the_same_commit(tmp_path: Path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"w" * 4096)
    copied = seed_cache(tmp_path / "copied", folder)
    linked = seed_cache(tmp_path / "linked", folder, link=True)
    assert copied == linked
    snapshot = tmp_path / "linked" / "models--microsoft--Phi-3-mini-4k-instruct" / "snapshots" / linked
    blob = (snapshot / "sub" / "model.safetensors").resolve()
    assert blob.stat().st_ino == (folder / "sub" / "model.safetensors").stat().st_ino
    copied_blob = (tmp_path / "copied" / blob.relative_to(tmp_path / "linked")).resolve()
    assert copied_blob.stat().st_ino != blob.stat().st_ino and copied_blob.read_bytes() == b"w" * 4096
