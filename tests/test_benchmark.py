"""The speed benchmark (``bench``): its figures and ratios, end to end on a tiny random Phi-3, and its helpers.

No test here has a time limit: a timing is a benchmark that prints figures, not an assertion.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.benchmark import run_benchmark
from bench.machine import OtherLoad, measure_quietly, wait_for_quiet
from bench.model import SHAPES, build_random_phi3, is_word_token, make_prompts
from bench.report import RATIOS, RE_ENCODED, SAME_AS_BARE, format_table, ratios, resolve_requests, token_count_check
from bench.served import server_peak, tree_peaks

NEW_TOKENS = 8
TIMED_PROMPTS = 2
BATCH = 8
IN_PROCESS = ("bare", "pyfunc", "transformers", "pyfunc_batch1", "pyfunc_batch8", "bare_batch8")
PAIRED = ("bare_paired", "pyfunc_paired")
COUNT_SOURCES = {"generator", "usage.completion_tokens", SAME_AS_BARE, RE_ENCODED}


# The module's fixture runs the whole benchmark on a model it builds: an integration test.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The whole benchmark on the tiny shape, without the HTTP-served configuration."""
    out = tmp_path_factory.mktemp("bench") / "results" / "benchmark.json"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    figures = run_benchmark(
        shape="tiny",
        out=out,
        max_new_tokens=NEW_TOKENS,
        prompts=TIMED_PROMPTS,
        batch_size=BATCH,
        batch_repeats=1,
        served=False,
        quiet_wait_s=0,
        busy_retries=0,
        paired_rounds=1,
    )
    assert os.environ.get("MLFLOW_TRACKING_URI") == before, "the benchmark must restore the tracking URI"
    return figures, out


def test_json_file_holds_the_returned_figures(result):
    figures, out = result
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert {"model", "settings", "pyfunc_version", "configs", "ratios", "token_counts", "machine"} <= set(figures)
    assert set(figures["configs"]) == {*IN_PROCESS, *PAIRED}
    assert figures["pyfunc_version"]["input_form"] in ("chat", "prompt")


def test_every_configuration_has_positive_throughput_counts_and_memory(result):
    figures, _ = result
    for name, config in figures["configs"].items():
        assert config["tokens_per_s"] > 0, name
        assert (config["peak_rss_mb"] is None) == (name in PAIRED), name
        assert config["peak_rss_mb"] is None or config["peak_rss_mb"] > 0, name
        assert all(0 < tokens <= NEW_TOKENS for tokens in config["new_tokens"]), name
        assert set(config["tokens_from"]) <= COUNT_SOURCES, name
    configs = figures["configs"]
    assert len(configs["bare"]["new_tokens"]) == TIMED_PROMPTS
    assert len(configs["pyfunc_batch1"]["new_tokens"]) == BATCH
    assert len(configs["pyfunc_batch8"]["new_tokens"]) == BATCH
    assert len(configs["bare_batch8"]["new_tokens"]) == BATCH
    # One round in each of the two processes that pair them (the bare loop's and the pyfunc's).
    assert [len(configs[name]["new_tokens"]) for name in PAIRED] == [2 * TIMED_PROMPTS, 2 * TIMED_PROMPTS]
    pair_ratios = configs["pyfunc_paired"]["pair_ratios"]
    assert pair_ratios["n"] == 2 * TIMED_PROMPTS
    assert pair_ratios["min"] <= pair_ratios["mean"] <= pair_ratios["max"]
    assert all(config["other_cpu_cores"] >= 0 for config in configs.values())
    assert configs["bare"]["tokens_from"] == ["generator"]
    assert configs["transformers"]["tokens_from"] == ["usage.completion_tokens"]


def test_muted_eos_makes_every_request_generate_all_tokens(result):
    figures, _ = result
    assert figures["token_counts"] == {"all_equal": True, "expected": NEW_TOKENS, "differing": {}}


def test_prompts_have_the_requested_length(result):
    figures, _ = result
    assert figures["settings"]["prompt_tokens"] == [32] * BATCH


def test_ratios_are_the_quotients_of_the_figures(result):
    figures, _ = result
    configs = figures["configs"]
    assert set(figures["ratios"]) == set(RATIOS) - {"served/in-process"}
    for name, ratio in figures["ratios"].items():
        numerator, denominator, target = RATIOS[name]
        expected = configs[numerator]["tokens_per_s"] / configs[denominator]["tokens_per_s"]
        assert ratio["value"] == pytest.approx(expected, rel=1e-12)
        assert ratio["target"] == target
        assert ratio["met"] == (None if target is None else ratio["value"] >= target)


def test_ttft_is_measured_for_the_bare_loop_and_explained_where_missing(result):
    figures, _ = result
    configs = figures["configs"]
    assert configs["bare"]["ttft_ms"] > 0
    for name, config in configs.items():
        assert config["ttft_ms"] is not None or config["ttft_note"], name
    assert configs["transformers"]["ttft_ms"] is None
    assert "predict_stream" in configs["transformers"]["ttft_note"]


def test_table_names_every_configuration_and_ratio(result):
    figures, _ = result
    table = format_table(figures)
    for label in ("bare og loop", "transformers pyfunc", "batch 8", "other CPU", *figures["ratios"]):
        assert label in table


def test_resolve_requests_takes_the_bare_count_for_the_same_text_and_re_encodes_otherwise():
    references = [{"text": " a b", "new_tokens": 7}, {"text": " c", "new_tokens": 5}]
    requests = [
        {"text": " a b", "new_tokens": None, "tokens_from": None},
        {"text": " other", "new_tokens": None, "tokens_from": None},
    ]
    resolved = resolve_requests(requests, references, count_tokens=lambda text: 3)
    assert [(r["new_tokens"], r["tokens_from"], r["same_as_bare"]) for r in resolved] == [
        (7, SAME_AS_BARE, True),
        (3, RE_ENCODED, False),
    ]
    known = resolve_requests([{"text": " x", "new_tokens": 4, "tokens_from": "generator"}], references, len)
    assert (known[0]["new_tokens"], known[0]["same_as_bare"]) == (4, False)


def test_ratios_and_count_check_on_given_figures():
    configs = {
        "bare": {"tokens_per_s": 100.0, "new_tokens": [8, 8]},
        "pyfunc": {"tokens_per_s": 96.0, "new_tokens": [8, 6]},
    }
    assert ratios(configs) == {
        "pyfunc/bare": {"value": 0.96, "numerator": "pyfunc", "denominator": "bare", "target": 0.97, "met": False}
    }
    assert token_count_check(configs, 8) == {"all_equal": False, "expected": 8, "differing": {"pyfunc": [8, 6]}}


def test_server_peak_is_the_scoring_server_not_the_cli():
    peaks = [
        {"pid": 1, "vmhwm_mb": 300.0, "command": "python mlflow models serve -m models:/m-1"},
        {"pid": 2, "vmhwm_mb": 200.0, "command": "python uvicorn --workers 1 mlflow.pyfunc.scoring_server.app:app"},
    ]
    assert server_peak(peaks)["pid"] == 2
    assert server_peak(peaks[:1])["pid"] == 1
    (own,) = [p for p in tree_peaks(os.getpid()) if p["pid"] == os.getpid()]
    assert own["vmhwm_mb"] > 0


def test_random_model_mutes_all_but_word_tokens(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    built = build_random_phi3(tmp_path / "model", SHAPES["tiny"], seed=1)
    tokenizer = AutoTokenizer.from_pretrained(built.path)
    model = AutoModelForCausalLM.from_pretrained(built.path)
    words = sorted(i for token, i in tokenizer.get_vocab().items() if is_word_token(token))
    norms = model.lm_head.weight.norm(dim=1)
    muted = torch.ones_like(norms, dtype=torch.bool)
    muted[words] = False
    assert built.muted_ids == int(muted.sum()) == SHAPES["tiny"].vocab_size - len(words)
    assert norms[muted].max() < norms[~muted].min()
    assert tokenizer.eos_token_id not in words
    prompts = make_prompts(built.path, count=3, length=20, seed=1)
    assert [p.tokens for p in prompts] == [20, 20, 20]
    assert all(p.content in p.templated for p in prompts)


@pytest.mark.parametrize(
    ("token", "word"),
    [("Ġcapital", True), ("▁capital", True), ("capital", False), ("▁", False), ("▁12", False), ("Ġ<|end|>", False)],
)
def test_word_tokens_are_a_space_then_letters_in_both_tokenizer_kinds(token: str, word: bool):
    """Byte-level BPE (the benchmark models) and SentencePiece (Phi-3-mini's own tokenizer, for --shape phi3-mini)."""
    assert is_word_token(token) is word


def test_other_load_is_measured_in_cores():
    meter = OtherLoad()
    time.sleep(0.5)  # /proc/stat counts in ticks of 10 ms: a short window would round badly
    assert 0 <= meter.cores() <= os.cpu_count() + 0.1
    assert wait_for_quiet(0) is None


def test_measure_quietly_measures_again_while_busy_and_keeps_the_quietest():
    results = iter([{"other_cpu_cores": cores, "n": n} for n, cores in ((1, 1.0), (2, 0.5), (3, 0.9))])
    best = measure_quietly("x", lambda: next(results), quiet_wait_s=0, retries=2)
    assert (best["n"], best["attempts_other_cpu_cores"]) == (2, [1.0, 0.5, 0.9])
    quiet = measure_quietly("x", lambda: {"other_cpu_cores": 0.0}, quiet_wait_s=0, retries=2)
    assert quiet["attempts_other_cpu_cores"] == [0.0]
