"""``onnx_source``: a prebuilt onnxruntime-genai model in place of the export, from a local folder or a Hub folder.

The prebuilt models here are folders the project exported itself (the ``onnx_dir`` fixture); the Hub source is that
folder seeded into a real Hugging Face cache layout under the cookbook's repo id and subfolder, read by
huggingface_hub itself with ``HF_HUB_OFFLINE`` (no fakes).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest

from llmflow.chain.reuse import STILL_VALID
from llmflow.download import DownloadOptions, download
from llmflow.errors import InputError
from llmflow.export import prebuilt
from llmflow.export_onnx import ExportOptions, export_onnx
from llmflow.log_pyfunc import LogPyfuncOptions, log_pyfunc
from llmflow.main import MainOptions
from llmflow.options import build
from llmflow.sources.hf_cache import seed_cache
from llmflow.sources.manifest import build_manifest, manifest_digest
from llmflow.tracking.names import (
    ONNX_MANIFEST_ARTIFACT,
    TAG_EXECUTION_PROVIDER,
    TAG_INT4_ACCURACY_LEVEL,
    TAG_INT4_BLOCK_SIZE,
    TAG_ONNX_SOURCE,
    TAG_ONNX_SOURCE_SHA,
    TAG_PRECISION,
    TAG_SMOKE_TEST,
)

COOKBOOK_REPO = "microsoft/Phi-3-mini-4k-instruct-onnx"
COOKBOOK_FOLDER = "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"


# Parsing: unit tier.
def test_the_accepted_forms_parse(tmp_path: Path):
    assert prebuilt.parse_onnx_source("export").kind == "export"
    hub = prebuilt.parse_onnx_source(f"hf://{COOKBOOK_REPO}/{COOKBOOK_FOLDER}")
    assert (hub.kind, hub.repo_id, hub.revision, hub.subfolder) == ("hub", COOKBOOK_REPO, "main", COOKBOOK_FOLDER)
    pinned = prebuilt.parse_onnx_source("hf://org/repo@refs%2Fpr%2F3")
    assert (pinned.repo_id, pinned.revision, pinned.subfolder) == ("org/repo", "refs/pr/3", "")
    assert hub.pinned("abc123") == f"hf://{COOKBOOK_REPO}@abc123/{COOKBOOK_FOLDER}"
    assert prebuilt.parse_onnx_source(f"hf://{COOKBOOK_REPO}@abc123/{COOKBOOK_FOLDER}") == prebuilt.OnnxSource(
        "hub", repo_id=COOKBOOK_REPO, revision="abc123", subfolder=COOKBOOK_FOLDER
    )
    local = prebuilt.parse_onnx_source(str(tmp_path))
    assert (local.kind, local.path) == ("local", tmp_path.resolve())


@pytest.mark.parametrize(
    "value",
    ["hf://", "hf://just-an-org", "hf://org/repo/../secrets", "s3://bucket/onnx", "/no/such/onnx-folder", " "],
)
def test_a_bad_source_is_one_line_naming_it_and_the_accepted_forms(value: str):
    with pytest.raises(InputError) as error:
        prebuilt.check_onnx_source("onnx_source", value)
    message = str(error.value)
    assert "\n" not in message and repr(value)[1:-1].strip() in message
    assert "'export'" in message and "hf://<org>/<repo>[@<revision>][/<subfolder>]" in message


def test_main_refuses_a_bad_source_when_its_options_are_checked():
    with pytest.raises(InputError, match="onnx_source 's3://bucket/onnx' is not accepted"):
        build(MainOptions, {"onnx_source": "s3://bucket/onnx"}).check()


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


CONFIG = json.dumps({"model": {"decoder": {"filename": "model.onnx"}}})


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "has no genai_config.json"),
        ({"genai_config.json": "{}"}, "genai_config.json has no model.decoder.filename"),
        ({"genai_config.json": CONFIG, "tokenizer.json": "{}"}, "has no 'model.onnx', the decoder"),
        ({"genai_config.json": CONFIG, "model.onnx": ""}, "has no tokenizer (tokenizer.json or tokenizer.model)"),
    ],
)
def test_a_folder_that_is_no_genai_model_is_refused_naming_what_is_missing(tmp_path: Path, files, expected: str):
    with pytest.raises(InputError) as error:
        prebuilt.check_folder(_folder(tmp_path, files), "onnx_source 'x'")
    assert expected in str(error.value) and str(error.value).startswith("onnx_source 'x'")


# The project's own export as a prebuilt source: integration tier (model fixtures).
def test_describe_reads_precision_int4_settings_and_provider_from_the_folder(onnx_dir: Path):
    config = prebuilt.check_folder(onnx_dir, "the fixture")
    assert prebuilt.describe(onnx_dir, config) == prebuilt.Description("int4", "cpu", 32, 4)


@pytest.fixture
def download_run_id(tracking_uri: str, tiny_model_dir: Path) -> str:
    return download(DownloadOptions(model=str(tiny_model_dir))).run_id


def _check_prebuilt_run(run_id: str, folder: Path, source_tag: str, pin: str) -> None:
    run = mlflow.get_run(run_id)
    tags = run.data.tags
    assert (tags[TAG_ONNX_SOURCE], tags[TAG_ONNX_SOURCE_SHA]) == (source_tag, pin)
    assert (tags[TAG_PRECISION], tags[TAG_EXECUTION_PROVIDER]) == ("int4", "cpu")
    assert (tags[TAG_INT4_BLOCK_SIZE], tags[TAG_INT4_ACCURACY_LEVEL]) == ("32", "4")
    assert tags[TAG_SMOKE_TEST] == "passed"
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{ONNX_MANIFEST_ARTIFACT}")
    assert logged["files"] == build_manifest(folder)
    assert "export_seconds" in run.data.metrics and run.data.metrics["smoke_tokens"] > 0


def test_a_local_folder_is_taken_as_it_is_and_pinned_by_its_content(
    onnx_dir: Path, download_run_id: str, tmp_path: Path
):
    folder = shutil.copytree(onnx_dir, tmp_path / "prebuilt")
    pin = "sha256:" + manifest_digest(build_manifest(folder))
    result = export_onnx(ExportOptions(download_run_id=download_run_id, onnx_source=str(folder)))
    _check_prebuilt_run(result.run_id, folder, str(folder.resolve()), pin)
    assert (result.precision, result.smoke_test) == ("int4", "passed")

    # The pyfunc logs it like any export and records where it came from.
    logged = log_pyfunc(LogPyfuncOptions(export_run_id=result.run_id, max_new_tokens=8))
    model = mlflow.get_logged_model(logged.model_id)
    assert model.params["onnx_source"] == str(folder.resolve()) and model.params["int4_block_size"] == "32"
    assert mlflow.get_run(logged.run_id).data.tags[TAG_ONNX_SOURCE] == str(folder.resolve())

    # main reuses the export while the folder is unchanged, and runs it again once its content changes.
    run = mlflow.get_run(result.run_id)
    assert STILL_VALID["export_onnx"](run, {"onnx_source": str(folder)})
    (folder / "genai_config.json").write_text((folder / "genai_config.json").read_text() + "\n")
    assert not STILL_VALID["export_onnx"](run, {"onnx_source": str(folder)})


def test_a_folder_onnxruntime_genai_cannot_load_is_a_bad_source(onnx_dir: Path, download_run_id: str, tmp_path: Path):
    folder = shutil.copytree(onnx_dir, tmp_path / "broken")
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    (folder / decoder).write_bytes(b"not an onnx graph")
    with pytest.raises(InputError, match=rf"^onnx_source '{re.escape(str(folder))}'"):
        export_onnx(ExportOptions(download_run_id=download_run_id, onnx_source=str(folder)))


@pytest.fixture
def cookbook_cache(tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The project's export seeded as the cookbook's folder of its ONNX repo, in a real HF cache, offline."""
    from huggingface_hub import constants

    repo_tree = tmp_path / "repo"
    shutil.copytree(onnx_dir, repo_tree / COOKBOOK_FOLDER)
    (repo_tree / "README.md").write_text("not part of the folder\n")
    sha = seed_cache(tmp_path / "hf" / "hub", repo_tree, repo_id=COOKBOOK_REPO)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return sha


def test_a_hub_folder_resolves_its_revision_in_the_cache_and_records_the_commit(
    cookbook_cache: str, onnx_dir: Path, download_run_id: str
):
    sha = cookbook_cache
    result = export_onnx(
        ExportOptions(download_run_id=download_run_id, onnx_source=f"hf://{COOKBOOK_REPO}/{COOKBOOK_FOLDER}")
    )
    _check_prebuilt_run(result.run_id, onnx_dir, f"hf://{COOKBOOK_REPO}@{sha}/{COOKBOOK_FOLDER}", sha)
    run = mlflow.get_run(result.run_id)
    assert STILL_VALID["export_onnx"](run, {"onnx_source": f"hf://{COOKBOOK_REPO}/{COOKBOOK_FOLDER}"})


def test_a_hub_revision_not_in_the_cache_is_one_line_naming_repo_and_revision(cookbook_cache: str, download_run_id):
    with pytest.raises(InputError) as error:
        export_onnx(
            ExportOptions(download_run_id=download_run_id, onnx_source=f"hf://{COOKBOOK_REPO}@v2/{COOKBOOK_FOLDER}")
        )
    message = str(error.value)
    assert "\n" not in message
    assert f"'{COOKBOOK_REPO}' at revision 'v2' is not in the Hugging Face cache" in message


def test_reproduce_fetches_the_recorded_commit_after_the_branch_moved(
    cookbook_cache: str, onnx_dir: Path, download_run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from llmflow.register import RegisterOptions, register
    from llmflow.reproduce import ReproduceOptions, reproduce

    # The steps reproduce runs are processes of their own: they find the seeded cache through the environment.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = f"hf://{COOKBOOK_REPO}/{COOKBOOK_FOLDER}"
    export = export_onnx(ExportOptions(download_run_id=download_run_id, onnx_source=source))
    logged = log_pyfunc(LogPyfuncOptions(export_run_id=export.run_id, max_new_tokens=8))
    register(RegisterOptions(model_uri=logged.model_uri, registered_model_name="prebuilt"))
    # `main` moves on: a new commit of the repo whose folder differs.
    moved = tmp_path / "moved"
    shutil.copytree(onnx_dir, moved / COOKBOOK_FOLDER)
    (moved / COOKBOOK_FOLDER / "genai_config.json").write_text((onnx_dir / "genai_config.json").read_text() + " ")
    new_sha = seed_cache(tmp_path / "hf" / "hub", moved, repo_id=COOKBOOK_REPO)
    assert new_sha != cookbook_cache

    result = reproduce(ReproduceOptions(model_uri="models:/prebuilt/1"))
    assert (result.identical, result.differences) == (True, [])
    rebuilt = mlflow.get_run(result.rebuilt_runs["export_onnx"])
    assert rebuilt.data.params["onnx_source"] == f"hf://{COOKBOOK_REPO}@{cookbook_cache}/{COOKBOOK_FOLDER}"
    assert rebuilt.data.tags[TAG_ONNX_SOURCE_SHA] == cookbook_cache
