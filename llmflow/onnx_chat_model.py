"""MLflow pyfunc that generates text with onnxruntime-genai; logged as models-from-code.

This file is the model: MLflow copies it next to the ONNX folder and runs it where the model is served,
where the ``llmflow`` package may be absent. It therefore imports only the standard library, mlflow,
pandas and onnxruntime_genai.

- Artifacts: ``onnx``, the folder written by the onnxruntime-genai model builder.
- Model config: generation defaults ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``;
  ``temperature`` 0 means greedy decoding.
- Input: a DataFrame with a string column ``prompt`` holding text already in the model's chat format,
  e.g. ``"<|user|>\\nWhat is the capital of Spain?<|end|>\\n<|assistant|>\\n"``.
- Output: one generated string per row.
- Params: the same four names as the model config, per request.
"""

import json
from pathlib import Path
from typing import Any

import mlflow
import onnxruntime_genai as og
import pandas as pd

GENERATION_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
PARAM_TYPES = {"max_new_tokens": int, "temperature": float, "top_p": float, "top_k": int}
PARAM_CHECKS = {
    "max_new_tokens": (lambda v: v >= 1, "at least 1"),
    "temperature": (lambda v: v >= 0, "0 (greedy) or more"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 1, "at least 1"),
}


def generation_options(defaults: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Merge per-request ``params`` over ``defaults``, cast them, and check their ranges."""
    unknown = sorted(set(params or {}) - set(GENERATION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; accepted: {', '.join(GENERATION_DEFAULTS)}")
    given = {k: v for k, v in (params or {}).items() if v is not None}
    options = {name: PARAM_TYPES[name]({**defaults, **given}[name]) for name in GENERATION_DEFAULTS}
    for name, (ok, accepted) in PARAM_CHECKS.items():
        if not ok(options[name]):
            raise ValueError(f"parameter {name}={options[name]} is out of range; expected {accepted}")
    return options


def prompts_of(model_input: pd.DataFrame | dict[str, Any]) -> list[str]:
    """The ``prompt`` of every row, each checked to be a string."""
    if isinstance(model_input, dict):
        single = isinstance(model_input.get("prompt"), str)
        model_input = pd.DataFrame([model_input] if single else model_input)
    if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
        raise ValueError("model input must be a DataFrame with a string column 'prompt'")
    prompts = model_input["prompt"].tolist()
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise TypeError(f"row {row}: 'prompt' must be a non-empty string, got {type(prompt).__name__} {prompt!r}")
    return prompts


class OnnxChatModel(mlflow.pyfunc.PythonModel):
    """Chat-formatted prompt in, generated text out, with a fresh onnxruntime-genai generator per row."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        onnx_dir = Path(context.artifacts["onnx"])
        self.model = og.Model(str(onnx_dir))
        self.tokenizer = og.Tokenizer(self.model)
        genai_config = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context_length = int(genai_config["model"]["context_length"])
        config = context.model_config or {}
        self.defaults = {name: config.get(name, value) for name, value in GENERATION_DEFAULTS.items()}

    # The DataFrame hint tells MLflow to validate input against the logged signature, not infer one from hints.
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        options = generation_options(self.defaults, params)
        return [self.generate(prompt, options) for prompt in prompts_of(model_input)]

    def generate(self, prompt: str, options: dict[str, Any]) -> str:
        """Generate for one prompt; the generator and its params live only for this call."""
        ids = self.tokenizer.encode(prompt)
        if len(ids) >= self.context_length:
            raise ValueError(
                f"prompt has {len(ids)} tokens; the model's context length is {self.context_length} tokens, "
                f"so a prompt may have at most {self.context_length - 1}"
            )
        search: dict[str, Any] = {
            "max_length": min(len(ids) + options["max_new_tokens"], self.context_length),
            "do_sample": options["temperature"] > 0,
        }
        if search["do_sample"]:
            search.update(temperature=options["temperature"], top_p=options["top_p"], top_k=options["top_k"])
        params = og.GeneratorParams(self.model)
        params.set_search_options(**search)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        return self.tokenizer.decode(generator.get_sequence(0)[len(ids) :])


mlflow.models.set_model(OnnxChatModel())
