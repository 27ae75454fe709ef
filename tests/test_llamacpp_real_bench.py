"""The real-model llama.cpp comparison's own logic (bench/llamacpp_real.py, the cases of bench/peer_workers.py),
without a model, llama.cpp or a server."""

from __future__ import annotations

import os
import time

import pytest

from bench.llamacpp_real import (
    INSTRUCTION,
    chat_prompts,
    format_clients_table,
    format_goals,
    format_probes,
    format_single_table,
    goal_verdicts,
    profile_by_operator,
    single_figures,
    speed_ratios,
)
from bench.peer_workers import longest_context, measure


def _request(tokens: int, ttft: float, seconds: float, prompt_tokens: int) -> dict:
    return {"tokens": list(range(tokens)), "ttft_seconds": ttft, "seconds": seconds, "prompt_tokens": prompt_tokens}


def test_single_figures_take_decode_from_the_short_case_and_ttft_from_both():
    cases = {
        "128": [_request(11, 0.1, 1.1, 128), _request(11, 0.3, 1.3, 128)],
        "512": [_request(3, 0.5, 9.0, 512), _request(3, 1.5, 9.0, 512)],
    }
    figures = single_figures(cases, "128", "512")
    assert figures["decode_tokens_per_s"] == pytest.approx(20 / 2.0)  # the long case's slow steps are left out
    assert figures["ttft_ms_128"] == pytest.approx(200.0)
    assert figures["ttft_ms_512"] == pytest.approx(1000.0)
    assert figures["prefill_tokens_per_s_512"] == pytest.approx((512 / 0.5 + 512 / 1.5) / 2)
    assert figures["prefill_tokens_per_s_128"] == pytest.approx((1280 + 128 / 0.3) / 2)


def test_speed_ratios_are_above_one_when_onnxruntime_genai_is_faster():
    ort = {"decode_tokens_per_s": 150.0, "ttft_ms_128": 20.0, "ttft_ms_512": 100.0}
    llama = {"decode_tokens_per_s": 100.0, "ttft_ms_128": 40.0, "ttft_ms_512": 50.0}
    assert speed_ratios(ort, llama, "128", "512") == {"decode": 1.5, "ttft_128": 2.0, "ttft_512": 0.5}


def test_a_goal_counts_the_slowest_llama_cpp_type_and_the_client_scaling():
    ratios = {
        "llama.cpp Q4_0": {"decode": 0.8, "ttft_128": 1.2, "ttft_512": 1.1},
        "llama.cpp Q4_K_M": {"decode": 1.3, "ttft_128": 1.0, "ttft_512": 0.9},
    }
    verdicts = goal_verdicts(ratios, 2.5, 0.69)
    assert verdicts["decode"] == {"value": 0.8, "goal": 1.0, "met": False}
    assert verdicts["ttft_128"]["met"] and verdicts["ttft_128"]["value"] == 1.0
    assert not verdicts["ttft_512"]["met"]
    assert verdicts["clients_16_over_1"] == {"value": 2.5, "goal": 3.0, "met": False}
    assert verdicts["share_of_bandwidth_bound"] == {"value": 0.69, "goal": 0.7, "met": False}
    assert goal_verdicts(ratios, 3.0, 0.7)["clients_16_over_1"]["met"]
    assert goal_verdicts(ratios, 3.0, 0.7)["share_of_bandwidth_bound"]["met"]
    assert "decode 0.80 (>= 1: NOT met)" in format_goals(verdicts)


def test_the_tables_show_each_engine_its_ratios_and_each_round():
    engine = {"weights": "w", "size_bytes": 90e6, "decode_tokens_per_s": 100.0, "ttft_ms_128": 50.0}
    engine |= {"ttft_ms_512": 250.0, "prefill_tokens_per_s_512": 2048.0, "peak_rss_mb": 300.0, "other_cpu_cores": 0.01}
    engine |= {"cpu_per_wall": 1.96, "share_of_bandwidth_bound": 0.614}
    result = {
        "settings": {"prompt_lengths": [128, 512]},
        "memory_bandwidth": {"bytes_per_second": 21.4e9, "threads": 2},
        "single": {"onnxruntime-genai int4": engine, "llama.cpp Q4_0": {**engine, "decode_tokens_per_s": 125.0}},
        "ratios": {"llama.cpp Q4_0": {"decode": 0.8, "ttft_128": 1.25, "ttft_512": 0.5}},
        "clients": {
            "llama-server Q4_0": {
                "other_cpu_cores": 0.0,
                "rounds": [
                    {"clients": 1, "requests": 2, "tokens": 128, "tokens_per_second": 50.0, "ttft_p50": 0.05},
                    {"clients": 16, "requests": 32, "tokens": 1024, "tokens_per_second": 175.0, "ttft_p50": 0.9},
                ],
            }
        },
    }
    single = format_single_table(result)
    assert "| llama.cpp Q4_0 | w | 90 | 125.0 | 61% | 50.0 | 250.0 | 2048 | 1.96 | 300 | 0.01 |" in single
    assert "21.4 GB/s with 2 threads" in single
    assert "| llama.cpp Q4_0 | 0.80x | 1.25x | 0.50x |" in single
    clients = format_clients_table(result)
    assert "| llama-server Q4_0 | 16 | 32 | 175.0 | 3.50 | 900 | 32.0 |" in clients


def _event(name: str, ts: int, dur: int, op: str | None = None) -> dict:
    if op is None:
        return {"cat": "Session", "name": name, "ts": ts, "dur": dur}
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_the_profile_splits_prefill_from_decode_by_run_length():
    events = [
        _event("model_run", 0, 1000),  # the prefill: the longest run
        _event("/model/layers.0/mlp/MatMul", 10, 600, "MatMulNBits"),
        _event("/lm_head/MatMul", 700, 300, "MatMulNBits"),
        _event("model_run", 2000, 100),
        _event("/model/layers.0/attn/GroupQueryAttention", 2010, 40, "GroupQueryAttention"),
        _event("/lm_head/MatMul", 2050, 40, "MatMulNBits"),
        _event("model_run", 3000, 100),
        _event("/lm_head/MatMul", 3010, 80, "MatMulNBits"),
    ]
    summary = profile_by_operator(events, prefill_runs=1)
    assert summary["prefill"]["runs"] == 1 and summary["decode"]["runs"] == 2
    assert summary["prefill"]["lm_head_share"] == pytest.approx(300 / 900)
    assert summary["decode"]["share_by_operator"] == {
        "MatMulNBits": pytest.approx(120 / 160),
        "GroupQueryAttention": 0.25,
    }
    assert summary["decode"]["kernel_ms_per_run"] == pytest.approx(0.08)
    with pytest.raises(ValueError, match="expected more than 3"):
        profile_by_operator(events, prefill_runs=3)


class _WordTokenizer:
    """One token per word, a two-token chat template around the message."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool, tokenize: bool) -> str:
        return f"<user> {messages[0]['content']} <assistant>"

    def __call__(self, text: str, add_special_tokens: bool) -> dict:
        return {"input_ids": list(range(len(text.split())))}


def test_chat_prompts_are_real_text_of_exactly_the_length_asked():
    words = [f"w{i}" for i in range(300)]
    prompts = chat_prompts(_WordTokenizer(), words, 3, 40, stride=50)
    instruction_words = len(INSTRUCTION.split())
    assert [len(p.ids) for p in prompts] == [40, 40, 40]
    assert prompts[1].content.split()[instruction_words] == "w50"
    assert len({p.content for p in prompts}) == 3
    assert prompts[0].templated.startswith("<user> " + INSTRUCTION.split()[0])


def test_chat_prompts_refuse_a_length_the_template_alone_exceeds():
    with pytest.raises(ValueError, match="could not make"):
        chat_prompts(_WordTokenizer(), ["a", "b"], 1, 3)


def test_cases_are_measured_each_with_its_own_new_tokens():
    calls: list[tuple[int, int]] = []

    def generate(ids: list[int], limit: int) -> dict:
        calls.append((len(ids), limit))
        time.sleep(0.005)  # a wall time the CPU others in this process spend cannot outweigh
        return {"tokens": [0] * limit}

    spec = {
        "repeats": 2,
        "cases": [
            {"name": "short", "prompt_ids": [[1, 2], [3, 4]], "max_new_tokens": 5},
            {"name": "long", "prompt_ids": [[1] * 8], "max_new_tokens": 1},
        ],
    }
    result = measure(generate, spec)
    assert 0 <= result["cpu_per_wall"] <= (os.cpu_count() or 1) + 0.5
    assert [len(result["cases"]["short"]), len(result["cases"]["long"])] == [4, 2]
    assert calls == [(2, 5)] * 5 + [(8, 1)] * 3  # one warm-up per case
    assert [r["prompt"] for r in result["cases"]["short"]] == [0, 1, 0, 1]
    assert longest_context(spec) == 9
    assert measure(generate, {"repeats": 1, "prompt_ids": [[1]], "max_new_tokens": 2})["requests"][0]["tokens"] == [
        0,
        0,
    ]


def test_the_probes_print_profile_kernels_padded_batch_and_prompt_cache():
    kernel = {"matmul": "lm_head", "M": 1, "bits": 4, "symmetric": True, "accuracy_level": 4, "gflops": 19.04}
    probes = {
        "ort_profile": {
            "decode": {
                "run_ms": 8.0,
                "share_by_operator": {"MatMulNBits": 0.7, "GroupQueryAttention": 0.3},
                "lm_head_share": 0.25,
            }
        },
        "matmul_nbits_kernels": [
            kernel,
            {**kernel, "M": 128, "gflops": 30.0},
            {**kernel, "symmetric": False, "gflops": 3.4},
        ]
        + [{**kernel, "symmetric": False, "M": 128, "gflops": 21.4}],
        "padded_batch_equals_alone": {"default": True, "prune_lm_head": False},
        "prompt_cache_llama_server_Q4_0": {"ttft_ms_cache_off": 60.0, "ttft_ms_cache_on": 9.0},
    }
    text = format_probes(probes, 128, 512)
    assert "MatMulNBits 70%, GroupQueryAttention 30%; LM head 25%" in text
    assert "| 4 bits asym, level 4 | 3.4 | 21.4 |" in text and "| 4 bits sym, level 4 | 19.0 | 30.0 |" in text
    assert "'prune_lm_head': False" in text
    assert "TTFT 60 ms with cache_prompt off, 9 ms on" in text
