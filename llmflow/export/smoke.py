"""The export's smoke test: one chat question answered greedily by the exported model, before the step ends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SMOKE_QUESTION = "What is the capital of Spain?"
SMOKE_MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class SmokeResult:
    prompt: str
    answer: str
    tokens: int


def smoke_test(
    onnx_dir: Path, question: str = SMOKE_QUESTION, max_new_tokens: int = SMOKE_MAX_NEW_TOKENS
) -> SmokeResult:
    """Ask the exported model one chat question with greedy decoding, through the serving generation loop."""
    import onnxruntime_genai as og

    from llmflow.chat_model.cpus import load_og_model
    from llmflow.chat_model.generation import greedy

    model = load_og_model(onnx_dir)
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": question}]), add_generation_prompt=True
    )
    tokens, _ = greedy(model, tokenizer.encode(prompt), max_new_tokens)
    return SmokeResult(prompt, tokenizer.decode(tokens), len(tokens))


def smoke_test_skip_reason(execution_provider: str) -> str | None:
    """Why this machine cannot run a model exported for ``execution_provider``, or ``None`` when it can."""
    import onnxruntime_genai as og

    available = {"cpu": lambda: True, "cuda": og.is_cuda_available}
    if available[execution_provider]():
        return None
    return (
        f"the installed onnxruntime-genai {og.__version__} has no {execution_provider.upper()} provider on this "
        "machine; run the exported model where it has one"
    )
