"""The patches package: each module is written for the pinned version and refuses another one, and a patch leaves
the patched library as shipped once its block ends."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from llmflow import PROJECT_ROOT, patches

PATCH_MODULES = {
    "llmflow.patches.mlflow": "mlflow",
    "llmflow.patches.transformers": "transformers",
    "llmflow.patches.onnxruntime_genai": "onnxruntime-genai",
}


def _pins() -> dict[str, str]:
    text = (PROJECT_ROOT / "requirements.txt").read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


@pytest.mark.parametrize(("module", "package"), sorted(PATCH_MODULES.items()))
def test_each_patch_module_is_written_for_the_pinned_version(module: str, package: str):
    assert importlib.import_module(module).WRITTEN_FOR == _pins()[package]


def test_another_installed_version_fails_loudly_at_import(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(patches, "version", lambda package: "99.0.0")
    monkeypatch.delitem(sys.modules, "llmflow.patches.onnxruntime_genai")
    with pytest.raises(patches.PatchedVersionMismatch) as info:
        importlib.import_module("llmflow.patches.onnxruntime_genai")
    message = str(info.value)
    assert "onnxruntime-genai 99.0.0 is installed" in message and "onnxruntime-genai==0.18.0" in message


def test_no_module_outside_the_package_patches_a_library():
    """The patches stay in one place: no other module of the project assigns into a library module or class."""
    patching = re.compile(r"^\s*(cls|flavor|flavor_config|pipelines|builder)\.[A-Za-z_]+\s*=(?!=)", re.M)
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "llmflow").rglob("*.py")
        if "patches" not in path.parts and patching.search(path.read_text())
    ]
    assert offenders == []
    assert not [p for p in (PROJECT_ROOT / "llmflow").rglob("*.py") if "unittest" in p.read_text()]


class _Base:
    def method(self) -> str:
        return "base"


class _Child(_Base):
    pass


def test_replaced_restores_own_and_inherited_attributes():
    module = type(sys)("fake")
    module.value = 1
    with patches.replaced("method", [(_Child, lambda self: "patched")]), patches.replaced("value", [(module, 2)]):
        assert (_Child().method(), module.value) == ("patched", 2)
    assert (_Child().method(), module.value) == ("base", 1)
    assert "method" not in vars(_Child)  # inherits again, rather than holding a copy of the base's


def test_replaced_restores_even_when_the_block_raises():
    with pytest.raises(RuntimeError), patches.replaced("method", [(_Base, lambda self: "patched")]):
        raise RuntimeError("inside")
    assert _Base().method() == "base"


def test_the_mlflow_and_transformers_patches_are_undone(tmp_path: Path):
    import mlflow.transformers as flavor
    from mlflow.transformers import flavor_config
    from transformers import pipelines

    from llmflow.patches.mlflow import named_checkpoint, pinned_revision
    from llmflow.patches.transformers import task_class_resolved

    stock = (flavor.build_flavor_config_from_local_checkpoint, flavor._DummyModel, pipelines.check_task)
    with named_checkpoint("org/model"), task_class_resolved(), pinned_revision("abc123"):
        assert flavor_config.get_latest_commit_for_repo("org/model") == "abc123"
        assert isinstance(pipelines.check_task("text-generation")[1]["impl"], type)
    assert (flavor.build_flavor_config_from_local_checkpoint, flavor._DummyModel, pipelines.check_task) == stock
