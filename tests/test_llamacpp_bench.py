"""The llama.cpp comparison's own logic (bench/llamacpp.py, peer_workers, gguf_convert), without llama.cpp."""

from __future__ import annotations

import json

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
