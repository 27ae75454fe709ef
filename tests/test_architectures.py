"""The onnxruntime-genai builder's supported architectures, read from its dispatch without importing it."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from llmflow.export import architectures as dl


def test_the_installed_builder_lists_phi3_and_its_peers():
    supported = dl.supported_architectures()
    assert "Phi3ForCausalLM" in supported
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM"} <= supported
    assert all(name.isidentifier() for name in supported)


def test_every_form_of_the_dispatch_is_read():
    source = """
if config.architectures[0] == "AForCausalLM":
    pass
elif config.architectures[0] in ("BModel", "CModel"):
    pass
elif (
    config.architectures[0]
    == "DForCausalLM"
):
    pass
elif other == "NotAnArchitecture":
    pass
"""
    assert dl._compared_architectures(ast.parse(source)) == {"AForCausalLM", "BModel", "CModel", "DForCausalLM"}


def test_a_builder_that_no_longer_dispatches_so_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = tmp_path / "builder.py"
    fake.write_text("def create_model(*args):\n    return REGISTRY[args[0]]\n")
    spec = importlib.util.spec_from_file_location("onnxruntime_genai.models.builder", fake)
    monkeypatch.setattr(dl.importlib.util, "find_spec", lambda name: spec)
    dl.supported_architectures.cache_clear()
    try:
        with pytest.raises(dl.BuilderUnreadable, match="found no architectures in .*builder.py"):
            dl.supported_architectures()
    finally:
        dl.supported_architectures.cache_clear()
