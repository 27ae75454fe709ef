"""Calibration one decoder layer at a time: the float model reads a text, and each linear layer's inputs are summed
into ``X^T X``, without the whole model in memory.

The int4 recipes that look at activations (GPTQ, ``llmflow.export.gptq``; activation-aware clipping,
``llmflow.export.clip``) need, for every linear layer, the Gram matrix of the inputs it reads. Running the whole float
model for it costs 4 bytes a parameter (15.3 GB at Phi-3-mini's 3.82 B), more than the export itself (6 GiB). Here,
as GPTQ's reference code does, the model is built on the ``meta`` device, and only the embedding, the final norm and
one decoder layer at a time are read from the safetensors files, in float32: the layer runs on the hidden states of
the text, its inputs are summed, ``on_layer`` sees the sums (and may change the layer's weights, e.g. to their
quantized values, so that the next layer reads what the quantized model will give it), the layer's outputs become the
next layer's inputs, and the layer is freed. The peak is one layer, the embedding and the sums.

The decoder layers run as the model's own modules, with the arguments the model itself gives each of them (position
embeddings, masks), so any family transformers implements takes this path unchanged; tests compare what each layer
reads with the whole model's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmflow.errors import InputError

logger = logging.getLogger(__name__)

WINDOW = 512
LM_HEAD = "lm_head"
# Linear layers that read the same input share one sum: q/k/v (or qkv) the attention input, gate/up the MLP input.
SHARED_INPUTS = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "qkv_proj": "attn_in",
    "o_proj": "o_in",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "gate_up_proj": "mlp_in",
    "down_proj": "down_in",
}

# ``on_layer(layer index, the layer module, {input kind: (X^T X in float64, rows)}, {input kind: [linear names]})``
OnLayer = Callable[[int, Any, dict[str, Any], dict[str, list[str]]], bool]


class SafetensorsWeights:
    """The tensors of a model folder's safetensors files (one file, or shards with an index), read one at a time."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            mapping = json.loads(index.read_text())["weight_map"]
            self.files = {name: model_dir / file for name, file in mapping.items()}
        elif (model_dir / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(model_dir / "model.safetensors", framework="pt") as handle:
                self.files = {name: model_dir / "model.safetensors" for name in handle.keys()}  # noqa: SIM118
        else:
            raise InputError(
                f"model folder '{model_dir}' has no model.safetensors or model.safetensors.index.json; calibration "
                "reads safetensors weights only (save the model with save_pretrained, which writes them)"
            )

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> Any:
        from safetensors import safe_open

        if name not in self.files:
            raise InputError(f"weight '{name}' is not in the model's safetensors files; the calibration needs it")
        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(name)


def _load(module: Any, prefix: str, weights: SafetensorsWeights, model: Any) -> None:
    """Give ``module`` (on the meta device) real float32 storage with its weights from ``weights``."""
    import torch

    module.to_empty(device="cpu")
    for sub in module.modules():  # non-persistent buffers (rotary frequencies, Gemma's embed_scale) are computed
        if sub._non_persistent_buffers_set:
            model._init_weights(sub)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(weights.get(prefix + name).to(torch.float32))


def _free(module: Any) -> None:
    module.to_empty(device="meta")


def _windows(model_dir: Path, text: str, max_positions: int) -> list[Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # verbose=False: the text is longer than the model's context on purpose; it is cut into windows below.
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
    window = min(WINDOW, max_positions)
    return [ids[start : start + window][None] for start in range(0, len(ids), window) if len(ids[start:]) > 1]


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def input_kind(linear_name: str) -> str:
    """The input a linear layer of a decoder layer reads (``self_attn.k_proj`` -> ``attn_in``); its own name else."""
    last = linear_name.rsplit(".", 1)[-1]
    return SHARED_INPUTS.get(last, linear_name)


def linears_by_input(layer: Any) -> dict[str, list[str]]:
    """``{input kind: [names of the layer's linear modules that read it]}``, in module order."""
    import torch

    kinds: dict[str, list[str]] = {}
    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear):
            kinds.setdefault(input_kind(name), []).append(name)
    return kinds


def calibrate_layerwise(
    model_dir: Path,
    text: str,
    on_layer: OnLayer,
    head: Callable[[Any, int], None] | None = None,
    wanted: Callable[[int], set[str]] | None = None,
) -> int:
    """Run the float model over ``text`` one decoder layer at a time (see the module doc); return the token count.

    ``on_layer`` gets each layer's input sums; when it returns True it changed the layer's weights, and the layer
    runs again so that the next layer reads the changed outputs. ``head(X^T X, rows)`` gets the LM head's input.
    ``wanted(layer index)`` names the input kinds to sum (all by default): a sum costs as much as the layer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    weights = SafetensorsWeights(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    body = model.get_decoder()
    layers = body.layers
    prefix = {id(module): name + "." for name, module in model.named_modules()}
    for name, module in body.named_children():
        if name != "layers":
            _load(module, prefix[id(module)], weights, model)
    windows = _windows(model_dir, text, int(getattr(config, "max_position_embeddings", WINDOW)))
    tokens = sum(window.shape[1] for window in windows)

    # Each layer's arguments, as the model gives them (a mask and position embeddings per attention type: Gemma's
    # sliding and full layers differ): every layer records them and passes its input through, for each window.
    hidden: list[Any] = []
    arguments: list[list[dict[str, Any]]] = [[] for _ in layers]

    def recorder(index: int) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            state = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                hidden.append(state)
            arguments[index].append(kwargs)
            return state

        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        with torch.no_grad():
            for window in windows:
                body(input_ids=window, use_cache=False)
    finally:
        for layer in layers:
            del layer.forward

    def run(layer: Any, index: int) -> list[Any]:
        return [_hidden(layer(state, **kwargs)) for state, kwargs in zip(hidden, arguments[index], strict=True)]

    for index, layer in enumerate(_progress(layers)):
        _load(layer, prefix[id(layer)], weights, model)
        kinds = linears_by_input(layer)
        summed = {kind: names for kind, names in kinds.items() if wanted is None or kind in wanted(index)}
        sums: dict[str, Any] = {}
        with torch.no_grad(), _summed_inputs(layer, summed, sums):
            outputs = run(layer, index)
        if on_layer(index, layer, sums, kinds):
            with torch.no_grad():
                outputs = run(layer, index)
        hidden = outputs
        del sums
        _free(layer)
    if head is not None:
        with torch.no_grad():
            normed = [body.norm(state) for state in hidden]
            head(*_gram(normed))
    logger.info("calibration: %d tokens, %d layers, one at a time", tokens, len(layers))
    return tokens


def _gram(inputs: list[Any]) -> tuple[Any, int]:
    import torch

    total, rows = None, 0
    for x in inputs:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        part = x.T @ x
        total = part if total is None else total + part
        rows += x.shape[0]
    return total, rows


@contextmanager
def _summed_inputs(layer: Any, kinds: dict[str, list[str]], sums: dict[str, Any]) -> Iterator[None]:
    """Within the block, each input kind's first linear layer adds its input's ``X^T X`` to ``sums[kind]``."""
    import torch

    def adder(kind: str) -> Callable[..., None]:
        def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            gram = (x.T @ x).to(torch.float64)  # a window's sum in float32, as GPTQ's reference; windows in float64
            total, rows = sums.get(kind, (0, 0))
            sums[kind] = (gram + total, rows + x.shape[0])

        return hook

    modules = dict(layer.named_modules())
    handles = [modules[names[0]].register_forward_hook(adder(kind)) for kind, names in kinds.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _progress(layers: Any) -> Iterator[Any]:
    from tqdm.auto import tqdm

    yield from tqdm(layers, desc="calibration", unit="layer")
