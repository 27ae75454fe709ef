"""The llama.cpp comparison's own logic (bench/llamacpp.py, peer_workers, gguf_convert), without llama.cpp."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.gguf_convert import check_gpt2_pre_tokenizer
from bench.llamacpp import engine_figures, format_peer_table, peer_ratios, same_tokens
from bench.peer_workers import timed_tokens
from llmflow.demo.tiny import train_tokenizer


def _request(tokens: int, ttft: float, seconds: float, prompt: int = 0) -> dict:
    return {"tokens": list(range(tokens)), "ttft_seconds": ttft, "seconds": seconds, "prompt": prompt}


def test_decode_rate_leaves_out_the_first_token_and_its_prefill():
    figures = engine_figures([_request(11, 0.5, 1.5), _request(11, 0.3, 1.3)])
    assert figures["decode_tokens_per_s"] == pytest.approx(20 / 2.0)
    assert figures["ttft_ms"] == pytest.approx(400.0)
    assert figures["tokens_per_s"] == pytest.approx(22 / 2.8)
    assert figures["new_tokens"] == [11]


def test_a_request_without_a_first_token_is_refused():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        engine_figures([_request(1, 0.1, 0.2)])


def test_ratios_are_onnxruntime_genai_over_llama_cpp():
    onnx = {"decode_tokens_per_s": 150.0, "ttft_ms": 20.0, "tokens_per_s": 140.0}
    llama = {"decode_tokens_per_s": 100.0, "ttft_ms": 40.0, "tokens_per_s": 70.0}
    assert peer_ratios(onnx, llama) == {"decode_tokens_per_s": 1.5, "ttft": 0.5, "tokens_per_s": 2.0}


def test_same_tokens_compares_requests_of_the_same_prompt():
    onnx = [_request(3, 0.1, 0.2, prompt=0), {**_request(3, 0.1, 0.2, prompt=1), "tokens": [9, 9, 9]}]
    llama = [_request(3, 0.1, 0.2, prompt=0), _request(3, 0.1, 0.2, prompt=1)]
    assert same_tokens(onnx, llama) == "1/2"


def test_the_table_names_both_engines_and_the_ratio():
    engine = {"weights": "w", "size_bytes": 2e6, "ttft_ms": 10.0, "decode_tokens_per_s": 100.0}
    engine |= {"tokens_per_s": 90.0, "peak_rss_mb": 300.0}
    result = {
        "engines": {"onnxruntime-genai": engine, "llama.cpp": {**engine, "decode_tokens_per_s": 50.0}},
        "ratios": {"decode_tokens_per_s": 2.0, "ttft": 1.0, "tokens_per_s": 1.0},
    }
    table = format_peer_table(result)
    assert "llama.cpp" in table and "onnxruntime-genai" in table
    assert "decode tokens/s 2.000" in table
    assert " 50.0 " in table


def test_timed_tokens_stops_at_the_limit_and_times_the_first_token():
    record = timed_tokens(lambda: iter(range(100)), 5)
    assert record["tokens"] == [0, 1, 2, 3, 4]
    assert 0 <= record["ttft_seconds"] <= record["seconds"]


def test_the_benchmark_tokenizer_has_gpt2_pre_tokenization(tmp_path):
    tokenizer = train_tokenizer(["What is the capital of France?\nParis."], 300)
    tokenizer.save_pretrained(tmp_path)
    check_gpt2_pre_tokenizer(json.loads((tmp_path / "tokenizer.json").read_text()))


def test_another_pre_tokenizer_is_refused():
    metaspace = {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}, "model": {"type": "BPE"}}
    with pytest.raises(ValueError, match="not GPT-2's byte-level"):
        check_gpt2_pre_tokenizer(metaspace)
    unigram = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    with pytest.raises(ValueError, match="is not BPE"):
        check_gpt2_pre_tokenizer({**unigram, "model": {"type": "Unigram"}})


def _folder(path, model_type: str, tokenizer_model: dict):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (path / "tokenizer.json").write_text(json.dumps({"model": tokenizer_model}))
    return path


def test_each_model_gets_the_converter_that_reads_its_vocabulary(tmp_path):
    from bench.gguf_convert import CONVERTERS
    from bench.llamacpp import converter_for

    assert converter_for(_folder(tmp_path / "smollm2", "llama", {"type": "BPE"})) == "llama"
    assert converter_for(_folder(tmp_path / "random", "phi3", {"type": "BPE"})) == "phi3"
    phi3_mini = _folder(tmp_path / "mini", "phi3", {"type": "BPE", "byte_fallback": True})
    assert converter_for(phi3_mini) == "phi3-llama-hf"
    assert {"llama", "phi3", "phi3-llama-hf"} <= set(CONVERTERS)
    with pytest.raises(ValueError, match="model_type 'gemma'.*accepted: llama, phi3"):
        converter_for(_folder(tmp_path / "gemma", "gemma", {"type": "BPE"}))


def test_a_gguf_decode_step_reads_every_tensor_but_the_embedding_table(monkeypatch: pytest.MonkeyPatch):
    from bench.llamacpp import gguf_bytes_per_token

    # A stand-in reader: the tensors and their sizes are all this reads.
    files = {
        "untied.gguf": [("token_embd.weight", 1000), ("blk.0.ffn_up.weight", 300), ("output.weight", 50)],
        "tied.gguf": [("token_embd.weight", 1000), ("blk.0.ffn_up.weight", 300)],
    }

    class Reader:
        def __init__(self, path: str) -> None:
            self.tensors = [SimpleNamespace(name=n, n_bytes=b) for n, b in files[path]]

    monkeypatch.setitem(sys.modules, "gguf", SimpleNamespace(GGUFReader=Reader))
    assert gguf_bytes_per_token(Path("untied.gguf")) == 350
    assert gguf_bytes_per_token(Path("tied.gguf")) == 1300  # the table is the LM head too: read whole every step


def test_an_onnx_decode_step_reads_every_initializer_but_the_gathered_table(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bench.scale.speed import weight_bytes_per_token

    def save(folder, tied: bool):
        embedding = numpy_helper.from_array(np.ones((64, 8), np.float32), "embed")
        head = numpy_helper.from_array(np.ones((8, 16), np.float32), "head")
        nodes = [helper.make_node("Gather", ["embed", "ids"], ["h"])]
        nodes.append(helper.make_node("MatMul", ["h", "head"], ["x"]))
        if tied:
            nodes.append(helper.make_node("MatMul", ["x2", "embed"], ["y"]))
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])], [embedding, head],
        )  # fmt: skip
        folder.mkdir()
        onnx.save(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)  # fmt: skip
        return folder

    untied = save(tmp_path / "untied", tied=False)
    data = (untied / "model.onnx.data").stat().st_size
    assert data >= 64 * 8 * 4 + 8 * 16 * 4
    assert weight_bytes_per_token(untied) == data - 64 * 8 * 4
    tied = save(tmp_path / "tied", tied=True)
    assert weight_bytes_per_token(tied) == (tied / "model.onnx.data").stat().st_size
