"""Phi-3-mini's real tokenizer through both flavours: the same token ids, the same chat prompt, the same stops.

The model is tiny and random, with Phi-3-mini-4k-instruct's real config (narrowed) and its real tokenizer, chat
template and generation config from ``../shared/phi3-mini-4k-instruct/``. The transformers flavour's tokenizer is
the one MLflow loads from the logged model; the ONNX flavour's is onnxruntime-genai's, on the export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from bench.scale.model import SHARED_PHI3
from llmflow.demo.shapes import PHI3_TOKENIZER_FILES, build_with_phi3_tokenizer
from tests.stores import own_store

pytestmark = pytest.mark.integration
SHARED = SHARED_PHI3
EOS_IDS = (32000, 32001, 32007)  # <|endoftext|>, <|assistant|>, <|end|>
REFERENCE_STRINGS = [
    "What",
    "What is the capital of Spain?",
    " What is the capital of Spain?",
    "Hello world",
    "  two leading spaces and  two inside",
    "line one\nline two\n\nafter a blank line",
    "\ttab\tseparated",
    "Numbers: 0 7 42 3.14159 1,000,000 2026-12-02",
    "Accents: café naïve façade Øresund São Paulo",
    "CJK: 北京是中国的首都。東京",
    "Emoji: 🙂🚀 and a flag 🇪🇸",
    "Code: def f(x):\n    return x ** 2  # square",
    "URL https://example.com/a?b=c&d=e",
    "<|user|>\nHi<|end|>\n<|assistant|>",
    "<|system|>You are terse.<|end|>",
    "ALL CAPS AND lower and MiXeD",
    "punctuation!?.,;:'\"()[]{}",
    "a" * 40,
]
CHAT = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What is the capital of Spain?"},
    {"role": "assistant", "content": "Madrid"},
    {"role": "user", "content": "And of France?"},
]
QUESTION = [{"role": "user", "content": "What is the capital of Spain?"}]


@dataclass(frozen=True)
class Logged:
    model_dir: Path
    onnx_uri: str
    transformers_uri: str


def _log_both(model_dir: Path) -> Logged:
    from llmflow.download import DownloadOptions, download
    from llmflow.export_onnx import ExportOptions, export_onnx
    from llmflow.log_pyfunc import LogPyfuncOptions, log_pyfunc
    from llmflow.log_transformers import LogTransformersOptions, log_transformers

    download_run = download(DownloadOptions(model=str(model_dir)))
    export = export_onnx(ExportOptions(download_run_id=download_run.run_id))
    onnx = log_pyfunc(LogPyfuncOptions(export_run_id=export.run_id, max_new_tokens=8)).model_uri
    transformers = log_transformers(LogTransformersOptions(download_run_id=download_run.run_id, max_new_tokens=8))
    return Logged(model_dir, onnx, transformers.model_uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _empty_store: Path):
    with own_store(tmp_path_factory.mktemp("real-tokenizer"), _empty_store, "real-tokenizer") as root:
        yield root


@pytest.fixture(scope="module")
def logged(store: Path) -> Logged:
    return _log_both(build_with_phi3_tokenizer(SHARED, store / "random-phi3"))


def _tokenizers(logged: Logged):
    import onnxruntime_genai as og

    pipeline = mlflow.transformers.load_model(logged.transformers_uri)
    onnx_dir = Path(mlflow.artifacts.download_artifacts(logged.onnx_uri)) / "artifacts" / "onnx"
    return pipeline.tokenizer, og.Tokenizer(og.Model(str(onnx_dir))), onnx_dir


def test_both_flavours_read_every_reference_string_as_the_same_ids(logged: Logged):
    hf, og_tokenizer, _ = _tokenizers(logged)
    for text in REFERENCE_STRINGS:
        assert hf(text, add_special_tokens=False)["input_ids"] == [int(i) for i in og_tokenizer.encode(text)], text
    assert hf("What", add_special_tokens=False)["input_ids"] == [1724]  # tokenizer.json as it is


def test_the_trap_without_config_json_is_a_different_tokenizer(logged: Logged, tmp_path: Path):
    """Why the ids are checked: without config.json beside it, transformers builds Phi-3's tokenizer as Llama's."""
    from transformers import AutoTokenizer

    hf, _, _ = _tokenizers(logged)
    for name in PHI3_TOKENIZER_FILES:
        shutil.copyfile(SHARED / name, tmp_path / name)
    rebuilt = AutoTokenizer.from_pretrained(tmp_path)
    differ = [t for t in REFERENCE_STRINGS if rebuilt(t)["input_ids"] != hf(t, add_special_tokens=False)["input_ids"]]
    print(f"\n{type(rebuilt).__name__} without config.json reads {len(differ)} of {len(REFERENCE_STRINGS)} differently")
    assert type(rebuilt).__name__ == "LlamaTokenizer" and differ


def test_both_flavours_build_the_same_chat_prompt(logged: Logged):
    from llmflow.chat_model.chat_protocol import find_chat_template

    hf, og_tokenizer, onnx_dir = _tokenizers(logged)
    expected = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert expected.endswith("<|assistant|>\n") and "<|system|>" in expected
    # The ONNX chat model templates with the template shipped in its folder (llmflow.chat_model.onnx_chat_model).
    got = og_tokenizer.apply_chat_template(
        json.dumps(CHAT), template_str=find_chat_template(onnx_dir), add_generation_prompt=True
    )
    assert got == expected
    assert [int(i) for i in og_tokenizer.encode(got)] == hf(expected, add_special_tokens=False)["input_ids"]


def _forced_first_token(logged: Logged, token_id: int, out_dir: Path) -> Path:
    """A copy of the model whose greedy first answer token to ``QUESTION`` is ``token_id``.

    The LM-head row of the token it would pick is copied, scaled by 4, into ``token_id``'s row: that logit is then
    the largest by a wide margin, also after int4 quantization.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(logged.model_dir)
    model = AutoModelForCausalLM.from_pretrained(logged.model_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(input_ids=ids["input_ids"]).logits[0, -1]
        picked = int(logits.argmax())
        assert logits[picked] > 0 and picked not in EOS_IDS
        model.lm_head.weight[token_id] = 4 * model.lm_head.weight[picked]
    model.save_pretrained(out_dir)
    for name in PHI3_TOKENIZER_FILES:
        shutil.copyfile(SHARED / name, out_dir / name)
    return out_dir


def _answers(logged: Logged) -> dict[str, dict]:
    request = {"messages": QUESTION, "max_tokens": 8}
    [onnx] = mlflow.pyfunc.load_model(logged.onnx_uri).predict(request)
    [transformers] = mlflow.pyfunc.load_model(logged.transformers_uri).predict(request)
    return {"onnx": onnx, "transformers": transformers}


def test_without_an_eos_both_flavours_answer_to_the_token_budget(logged: Logged):
    for flavour, answer in _answers(logged).items():
        assert answer["usage"]["completion_tokens"] == 8, (flavour, answer)


@pytest.mark.parametrize("eos_id", EOS_IDS)
def test_both_flavours_stop_on_each_eos_id(eos_id: int, logged: Logged, store: Path):
    forced = _log_both(_forced_first_token(logged, eos_id, store / f"eos-{eos_id}"))
    for flavour, answer in _answers(forced).items():
        assert answer["choices"][0]["message"]["content"] == "", (flavour, eos_id, answer)
        assert answer["usage"]["completion_tokens"] <= 1, (flavour, eos_id, answer)
