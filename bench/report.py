"""Turn the configurations' raw results into figures, ratios against the targets, and the printed table.

Token counts come from the configuration itself where it knows them (the generator, ``usage.completion_tokens``).
A prompt-form reply is a string: its count is the bare loop's when the text is the bare loop's text for the same
prompt (same engine, greedy), and otherwise the length of the re-encoded text, which is marked as an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import mean, stdev
from typing import Any

SAME_AS_BARE = "same text as the bare loop"
# Raw fields a configuration's figures carry over as they are.
PASSTHROUGH = (
    "load_seconds",
    "start_seconds",
    "process_tree_peaks",
    "other_cpu_cores",
    "quiet_before",
    "quiet_wait_seconds",
    "attempts_other_cpu_cores",
)
RE_ENCODED = "re-encoded text (estimate)"

# name: (numerator configuration, denominator configuration, target); figures to print, not asserts.
RATIOS: dict[str, tuple[str, str, float | None]] = {
    "pyfunc/bare": ("pyfunc", "bare", 0.97),
    "pyfunc/transformers": ("pyfunc", "transformers", 5.0),
    "batch8/batch1": ("pyfunc_batch8", "pyfunc_batch1", 3.0),
    "served/in-process": ("served", "pyfunc", 0.90),
    # The same, with both interleaved request by request in one process, which cancels the machine's drift.
    "pyfunc/bare paired": ("pyfunc_paired", "bare_paired", 0.97),
    # What the engine itself gains from a batch, for reading batch8/batch1: no target.
    "bare batch8/batch1": ("bare_batch8", "bare", None),
}
LABELS = {
    "bare": "bare og loop",
    "pyfunc": "ONNX pyfunc, in process",
    "transformers": "transformers pyfunc, in process",
    "served": "ONNX pyfunc, served (HTTP)",
    "pyfunc_batch1": "ONNX pyfunc, batch 1",
    "pyfunc_batch8": "ONNX pyfunc, batch 8",
    "bare_batch8": "bare og loop, batch 8",
    "bare_paired": "bare og loop, paired",
    "pyfunc_paired": "ONNX pyfunc, paired",
}
BATCH_NOTE = "a batch call returns all rows at once"


def resolve_requests(
    requests: list[dict[str, Any]], references: list[dict[str, Any]], count_tokens: Callable[[str], int]
) -> list[dict[str, Any]]:
    """Mark whether each reply is the bare loop's text, and count the replies that have no count.

    Request ``i`` was sent prompt ``i``, whose bare-loop reply is ``references[i]``.
    """
    resolved = []
    for request, reference in zip(requests, references, strict=False):
        same = request["text"] == reference["text"]
        if request["new_tokens"] is None:
            counted = (reference["new_tokens"], SAME_AS_BARE) if same else (count_tokens(request["text"]), RE_ENCODED)
            request = {**request, "new_tokens": counted[0], "tokens_from": counted[1]}
        resolved.append({**request, "same_as_bare": same})
    return resolved


def summarise(
    requests: list[dict[str, Any]], seconds: float, ttft: list[float], ttft_note: str, raw: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One configuration's figures: tokens/s is all new tokens over all time (aggregate for a batch)."""
    tokens = [r["new_tokens"] for r in requests]
    return {
        "form": raw.get("form"),
        "tokens_per_s": sum(tokens) / seconds,
        "ttft_ms": mean(ttft) * 1000 if ttft else None,
        "ttft_note": ttft_note,
        "new_tokens": tokens,
        "tokens_from": sorted({r["tokens_from"] for r in requests}),
        "seconds": seconds,
        "peak_rss_mb": raw.get("peak_rss_mb"),
        "peak_rss_source": raw.get("peak_rss_source"),
        "same_text_as_bare": f"{sum(r['same_as_bare'] for r in requests)}/{len(requests)}",
        "texts": [r["text"] for r in requests],
        **{key: raw[key] for key in PASSTHROUGH if key in raw},
        **extra,
    }


def single_config(raw: dict[str, Any], references: list[dict], count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """A one-request-at-a-time configuration; TTFT from its own records or from its ``predict_stream`` pass."""
    requests = resolve_requests(raw["requests"], references, count_tokens)
    ttft = [r["ttft_seconds"] for r in requests if r["ttft_seconds"] is not None]
    stream = raw.get("stream")
    note = "first generate_next_token"
    if not ttft and stream and stream["available"]:
        ttft = [r["ttft_seconds"] for r in stream["requests"] if r["ttft_seconds"] is not None]
        note = "first chunk of predict_stream"
    elif not ttft:
        note = stream["reason"] if stream else "no stream"
    seconds = [r["seconds"] for r in requests]
    return summarise(requests, sum(seconds), ttft, note, raw, mean_request_seconds=mean(seconds), stream=stream)


def batch_summary(raw: dict[str, Any], references: list[dict], count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Calls that each send all prompts as rows: aggregate throughput, all rows' new tokens over all calls' time."""
    rows = []
    for call in raw["batch_calls"]:
        counts = call.get("new_tokens") or [None] * len(call["texts"])
        replies = [
            {"text": text, "new_tokens": tokens, "tokens_from": None if tokens is None else "generator"}
            for text, tokens in zip(call["texts"], counts, strict=True)
        ]
        rows += resolve_requests(replies, references, count_tokens)
    calls = raw["batch_calls"]
    seconds = sum(c["seconds"] for c in calls)
    return summarise(rows, seconds, [], BATCH_NOTE, raw, batch_size=raw["batch_size"], calls=len(calls))


def batch_configs(raw: dict[str, Any], references: list[dict], count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """The ONNX pyfunc with batch 1 (each prompt its own call) and batch N (one call), same prompts, same process."""
    batch1 = resolve_requests(raw["batch1"], references, count_tokens)
    return {
        "pyfunc_batch1": summarise(batch1, sum(r["seconds"] for r in batch1), [], BATCH_NOTE, raw, batch_size=1),
        "pyfunc_batch8": batch_summary(raw, references, count_tokens),
    }


def paired_configs(
    raws: list[dict[str, Any]], references: list[dict], count_tokens: Callable[[str], int], timed: int
) -> dict[str, Any]:
    """The pyfunc and the plain loop in turns, from every process that paired them (``raw["paired"]``).

    Besides the two throughputs, the spread of the per-pair ratios (pyfunc tokens/s over bare tokens/s, same prompt,
    back to back) tells how far the paired ratio can be trusted: ``pair_ratios`` has their mean and 95% interval.
    """
    note = "in turns with the other in one process: see the rows above"
    merged: dict[str, list[dict[str, Any]]] = {"bare": [], "pyfunc": []}
    for raw in raws:
        for name, records in raw["paired"].items():
            cycle = [references[i % timed] for i in range(len(records))]
            merged[name] += resolve_requests(records, cycle, count_tokens)
    pairs = [
        (p["new_tokens"] / p["seconds"]) / (b["new_tokens"] / b["seconds"])
        for b, p in zip(merged["bare"], merged["pyfunc"], strict=True)
    ]
    spread = 1.96 * stdev(pairs) / math.sqrt(len(pairs)) if len(pairs) > 1 else None
    pair_ratios = {"mean": mean(pairs), "ci95_half_width": spread, "n": len(pairs)}
    pair_ratios.update(min=min(pairs), max=max(pairs))
    out = {}
    for name, requests in merged.items():
        shared = {
            "form": raws[-1]["form"] if name == "pyfunc" else "prompt",
            "other_cpu_cores": max(raw.get("other_cpu_cores", 0.0) for raw in raws),
        }
        extra = {"pair_ratios": pair_ratios} if name == "pyfunc" else {}
        out[f"{name}_paired"] = summarise(requests, sum(r["seconds"] for r in requests), [], note, shared, **extra)
    return out


def ratios(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (numerator, denominator, target) in RATIOS.items():
        if numerator in configs and denominator in configs:
            value = configs[numerator]["tokens_per_s"] / configs[denominator]["tokens_per_s"]
            out[name] = {
                "value": value,
                "numerator": numerator,
                "denominator": denominator,
                "target": target,
                "met": None if target is None else value >= target,
            }
    return out


def token_count_check(configs: dict[str, dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Whether every request of every configuration generated ``max_new_tokens``, and which did not."""
    short = {name: c["new_tokens"] for name, c in configs.items() if any(t != max_new_tokens for t in c["new_tokens"])}
    return {"all_equal": not short, "expected": max_new_tokens, "differing": short}


def text_agreement(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """How many replies of each configuration are the bare loop's text for the same prompt."""
    return {name: c["same_text_as_bare"] for name, c in configs.items() if name != "bare"}


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _counts(tokens: list[int]) -> str:
    return f"{tokens[0]} x{len(tokens)}" if len(set(tokens)) == 1 else ",".join(map(str, tokens))


def format_table(result: dict[str, Any]) -> str:
    configs = result["configs"]
    header = (
        f"{'configuration':<32} {'form':<6} {'tokens/s':>9} {'TTFT ms':>8} {'new tokens':>11} {'peak RSS MB':>12} "
        f"{'other CPU':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, label in LABELS.items():
        if name in configs:
            c = configs[name]
            other = _cell(c.get("other_cpu_cores"), 2)
            lines.append(
                f"{label:<32} {c['form'] or '':<6} {_cell(c['tokens_per_s']):>9} {_cell(c['ttft_ms']):>8} "
                f"{_counts(c['new_tokens']):>11} {_cell(c['peak_rss_mb'], 0):>12} {other:>9}"
            )
    lines += ["", f"{'ratio (tokens/s)':<22} {'value':>7}   target"]
    for name, r in result["ratios"].items():
        verdict = "met" if r["met"] else "not met"
        target = "none (reference)" if r["target"] is None else f">= {r['target']:g} ({verdict})"
        lines.append(f"{name:<22} {r['value']:>7.3f}   {target}")
        pair_ratios = result["configs"][r["numerator"]].get("pair_ratios")
        if pair_ratios and pair_ratios["ci95_half_width"] is not None:
            lines.append(
                f"{'':<22} per-pair mean {pair_ratios['mean']:.3f} +/- {pair_ratios['ci95_half_width']:.3f} (95%, "
                f"{pair_ratios['n']} pairs, range {pair_ratios['min']:.3f}-{pair_ratios['max']:.3f})"
            )
    lines.append("")
    for name, c in configs.items():
        if (c["ttft_ms"] is None and "paired" not in name) or name == "pyfunc":
            lines.append(f"TTFT {name}: {c['ttft_note']}")
    counts = result["token_counts"]
    if counts["all_equal"]:
        lines.append(f"token counts: every request generated {counts['expected']} new tokens")
    else:
        lines.append(f"token counts differ from {counts['expected']}: {counts['differing']}")
    lines.append(f"token counts from: { {name: c['tokens_from'] for name, c in configs.items()} }")
    lines.append(f"same text as the bare loop: {result['text_agreement']}")
    busy = {n: round(c["other_cpu_cores"], 2) for n, c in configs.items() if (c.get("other_cpu_cores") or 0) >= 0.2}
    if busy:
        lines.append(f"WARNING: other processes used CPU (cores) during {busy}: those figures are slowed by them")
    return "\n".join(lines)
