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
from llmflow.tracking.names import TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE
from tests.hf_cache import DEFAULT_REPO, seed_cache

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
    assert dl.model_dir_from_run(result.run_id) == result.model_dir


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
