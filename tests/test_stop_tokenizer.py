"""Which transformers models `llmflow.stop_tokenizer` makes a cache for (the cache itself is served in
tests/test_serving_transformers.py)."""

from __future__ import annotations

import pytest

from llmflow.errors import InputError
from llmflow.stop_tokenizer import recorded_name

STORED = {"model_binary": "model", "source_model_name": "local/tiny-phi3"}


def test_a_stored_model_is_cached_under_its_repo_id():
    assert recorded_name(STORED) == "local/tiny-phi3"
    assert recorded_name({**STORED, "source_model_name": "gpt2"}) == "gpt2"  # the Hub's oldest ids have no org


def test_a_hub_reference_needs_no_cache_of_its_own():
    with pytest.raises(InputError, match="hub reference to 'org/model'.*no cache of its own is needed"):
        recorded_name({"source_model_name": "org/model", "source_model_revision": "abc"})


@pytest.mark.parametrize("name", ["/tmp/llmflow-hf-x/model", "a/b/c", "../x", "./x", ""])
def test_a_name_that_is_not_a_repo_id_is_refused(name: str):
    with pytest.raises(InputError, match="is not a repo id"):
        recorded_name({**STORED, "source_model_name": name})
