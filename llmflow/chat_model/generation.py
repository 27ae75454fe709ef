"""The one onnxruntime-genai generation loop of the project.

The pyfunc (``onnx_chat_model``), the export's smoke test (``llmflow.export.smoke``), the endpoint's
batching scheduler and the benchmark's bare loop (``bench.workers``) all generate through ``start`` and ``steps``,
so the way a generator is built and driven is written once. Like every file of this package it imports only the
standard library, numpy and onnxruntime_genai: it runs where the ``llmflow`` package is absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnxruntime_genai as og


def search_options(
    batch_size: int,
    max_length: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 50,
    seed: int | None = None,
) -> dict[str, Any]:
    """onnxruntime-genai's search options: greedy when ``temperature`` is 0, else sampling with ``seed`` if given."""
    options: dict[str, Any] = {"batch_size": batch_size, "max_length": max_length, "do_sample": temperature > 0}
    if options["do_sample"]:
        options.update(temperature=temperature, top_p=top_p, top_k=top_k)
        if seed is not None:
            options["random_seed"] = seed
    return options


def start(
    model: og.Model,
    prompts: Sequence[Sequence[int]],
    pad: int,
    max_new_tokens: int,
    guidance: tuple[str, str] | None = None,
    **sampling: Any,
) -> Any:
    """A generator for ``prompts`` (one row each) that may add ``max_new_tokens`` to the longest one.

    Prompts are padded on the right with ``pad``: onnxruntime-genai 0.18 masks trailing pad tokens and continues
    each row from its last real token (left padding changes greedy answers). ``sampling``: see ``search_options``.
    ``guidance``: ``(kind, data)`` for ``set_guidance`` (``json_schema``, ``regex`` or ``lark_grammar``); the
    grammar is compiled here, and one it cannot compile raises ``RuntimeError`` (see ``check_guidance``).
    """
    width = max(len(ids) for ids in prompts)
    padded = np.full((len(prompts), width), pad, dtype=np.int32)
    for index, ids in enumerate(prompts):
        padded[index, : len(ids)] = ids
    params = og.GeneratorParams(model)
    params.set_search_options(**search_options(len(prompts), width + max_new_tokens, **sampling))
    if guidance is not None:
        params.set_guidance(*guidance)
    generator = og.Generator(model, params)
    generator.append_tokens(padded)
    return generator


def check_guidance(model: og.Model, guidance: tuple[str, str]) -> str | None:
    """Why llguidance cannot compile ``guidance`` for ``model``'s tokenizer, or ``None`` when it can.

    onnxruntime-genai compiles the grammar when the generator is built, not in ``set_guidance``, so this builds a
    one-token generator and drops it (about 1 ms; the first call per model also builds llguidance's view of the
    tokenizer, about 0.4 s for SmolLM2's 49,152 tokens).
    """
    params = og.GeneratorParams(model)
    params.set_search_options(batch_size=1, max_length=1)
    try:
        params.set_guidance(*guidance)
        og.Generator(model, params)
    except RuntimeError as error:
        return str(error)
    return None


def steps(generator: Any, finished: Callable[[], bool] = lambda: False) -> Iterator[list[int]]:
    """The next token of every row, one step at a time, until the generator is done or ``finished()`` is true.

    ``finished`` is asked before every step, so a caller that ends its rows (a stop string, a client that left)
    costs at most the step already running.
    """
    while not finished() and not generator.is_done():
        generator.generate_next_token()
        yield generator.get_next_tokens().tolist()


def greedy(model: og.Model, ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], float | None]:
    """The greedy tokens for one prompt until end of text or ``max_new_tokens``, and the seconds to the first one."""
    started, first = time.perf_counter(), None
    tokens: list[int] = []
    for [token] in steps(start(model, [ids], 0, max_new_tokens)):
        first = first if first is not None else time.perf_counter() - started
        tokens.append(int(token))
    return tokens, first
