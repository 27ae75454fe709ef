"""Weight-only int4/int8 quantization of the builder's graph, one MatMul at a time, in the builder's own IR.

The onnxruntime-genai builder (0.18) quantizes in ``Model.to_nbits``: it turns the whole graph into one
``ModelProto`` (``ir.to_proto``), which materialises every weight as fp32 at once, and then runs onnxruntime's
``MatMulNBitsQuantizer`` over it. For Phi-3-mini that is 15.3 GB of fp32 next to the 7.6 GB bf16 model: a 22.5 GiB
peak. Here each eligible ``MatMul`` is quantized in the IR graph, with the quantizer's own kernel
(``DefaultWeightOnlyQuantizer.qbits_block_quant``), and its float weight is dropped at once, which also frees the
bf16 torch tensor that the builder's lazy initializer pointed at. The peak is then about the bf16 model.

The graph that comes out is the one ``MatMulNBitsQuantizer`` makes: the same node and initializer names, the same
attributes in the same order, the quantized initializers appended in node order, unused initializers removed.
``tests/test_export_nbits.py`` checks the files are byte-identical to the stock builder's.

Only the builder's default int4/int8 path is handled (DEFAULT method, MatMulNBits operator format, no exact
overrides, no CUDA prepacking, MatMul only), with its per-node bit widths (``matmul_mixed_precision`` and the
project's ``qkv`` selector, ``llmflow.export.recipe``): as the builder does, the body is quantized first, then the
upgraded nodes in one pass per bit width. ``applies_to`` says when; anything else keeps the stock ``to_nbits``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from llmflow.export.recipe import Int4Recipe
from llmflow.export.spill import SpillFile, in_memory
from llmflow.patches.onnxruntime_genai import to_nbits_replaced

if TYPE_CHECKING:  # onnx_ir and ml_dtypes take seconds to import; only an export needs them
    import onnx_ir as ir

logger = logging.getLogger(__name__)

QUANTIZED_OP = "MatMulNBits"


class QuantizedBlocks(NamedTuple):
    """A 4-bit weight in ``MatMulNBits``' layout, as ``qbits_block_quant`` of onnxruntime returns it."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray


# (node name, float32 weight [K, N]) -> the weight to quantize, or the weight already quantized (GPTQ).
WeightTransform = Callable[[str, np.ndarray], "np.ndarray | QuantizedBlocks"]
# (initializer name, array) -> the tensor the graph holds: in memory (``ir.Tensor``), or on disk (``spill.SpillFile``).
TensorStore = Callable[[str, np.ndarray], "ir.TensorProtocol"]
MS_DOMAIN = "com.microsoft"


def applies_to(builder_model: Any) -> bool:
    """Whether the builder model's quantization settings are the default path this module reproduces exactly."""
    attrs = builder_model.quant_attrs
    return (
        getattr(builder_model, "quantization_algo", "default") == "default"
        and not attrs["use_qdq"]
        and tuple(attrs["op_types_to_quantize"]) == ("MatMul",)
        and all(
            set(c) == {"bits"} for c in (getattr(builder_model, "int4_customized_weight_config", {}) or {}).values()
        )
        and not getattr(builder_model, "exact_quant_overrides", {})
        and not getattr(builder_model, "exact_quant_override_names", set())
        and not builder_model.matmul_attrs.get("weights_prepacked")
    )


def _customized(builder_model: Any) -> dict[str, dict[str, int]]:
    """The builder model's per-node bit widths (``{"/lm_head/MatMul": {"bits": 8}}``), or ``{}``."""
    return getattr(builder_model, "int4_customized_weight_config", {}) or {}


def _block_quantizer(bits: int, block_size: int, is_symmetric: bool, accuracy_level: int | None) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
        QuantFormat,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=is_symmetric,
        accuracy_level=accuracy_level,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
        bits=bits,
    )
    return DefaultWeightOnlyQuantizer(config)


def _quantize_node(
    graph: ir.Graph,
    node: ir.Node,
    quantizer: Any,
    bits: int,
    block_size: int,
    accuracy_level: int,
    weight_transform: WeightTransform | None = None,
    store: TensorStore = in_memory,
):
    """Replace one ``MatMul`` with a constant 2-D weight by ``MatMulNBits``, as ``quantize_matmul`` builds it.

    ``weight_transform(node name, float32 weight)`` changes an int4 weight before it is quantized (the recipe's
    activation-aware clipping, ``llmflow.export.clip``), or quantizes it itself (GPTQ, ``llmflow.export.gptq``);
    ``store`` holds the quantized tensors (``llmflow.export.spill``)."""
    import ml_dtypes
    import onnx_ir as ir

    weight = node.inputs[1]
    # The builder's weights are transposed torch views; the quantizer's kernel reads its input as row-major.
    array = np.ascontiguousarray(weight.const_value.numpy())
    bfloat16 = array.dtype.name == "bfloat16"
    if bfloat16:
        array = array.astype(np.float32)
    transformed = None
    if weight_transform is not None and bits == 4:
        transformed = weight_transform(node.name, array.astype(np.float32, copy=False))
    if isinstance(transformed, QuantizedBlocks):
        packed, scales, zero_points = transformed
    else:
        if transformed is not None:
            array = np.ascontiguousarray(transformed)
        packed, scales, zero_points = quantizer.qbits_block_quant(array)
    if bfloat16:
        scales = scales.astype(ml_dtypes.bfloat16)
    rows, cols = array.shape
    del array
    new_inputs = [node.inputs[0]]
    names = [f"{weight.name}_Q{bits}", f"{weight.name}_scales"]
    tensors = [packed, scales]
    if not quantizer.config.is_symmetric:
        names.append(f"{weight.name}_zero_points")
        tensors.append(zero_points)
    for name, tensor in zip(names, tensors, strict=True):
        value = ir.Value(name=name, const_value=store(name, tensor))
        value.type = ir.TensorType(value.const_value.dtype)
        value.shape = ir.Shape(tensor.shape)
        graph.register_initializer(value)
        new_inputs.append(value)
    # onnx.helper.make_node sorts attributes by name; accuracy_level 0 is left out, as the quantizer does.
    attributes = {"K": rows, "N": cols, "bits": bits, "block_size": block_size}
    if accuracy_level:
        attributes["accuracy_level"] = accuracy_level
    new_node = ir.Node(
        MS_DOMAIN,
        QUANTIZED_OP,
        new_inputs,
        [ir.AttrInt64(key, attributes[key]) for key in sorted(attributes)],
        num_outputs=1,
        name=f"{node.name}_Q{bits}" if node.name else "",
    )
    ir.convenience.replace_nodes_and_values(graph, node, [node], [new_node], [node.outputs[0]], new_node.outputs)
    if not weight.uses():
        graph.initializers.pop(weight.name)


def _eligible(node: ir.Node, excluded: set[str]) -> bool:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.name in excluded:
        return False
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    return (
        weight is not None
        and weight.is_initializer()
        and weight.const_value is not None
        and len(weight.const_value.shape) == 2
    )


def quantize_graph(
    model: ir.Model,
    bits: int,
    block_size: int,
    is_symmetric: bool,
    accuracy_level: int | None,
    nodes_to_exclude: list[str] | tuple[str, ...] = (),
    after_each: Callable[[], object] | None = None,
    node_bits: dict[str, int] | None = None,
    weight_transform: WeightTransform | None = None,
    store: TensorStore = in_memory,
) -> ir.Model:
    """Quantize every eligible ``MatMul`` of ``model`` in place, one weight at a time; return ``model``.

    ``node_bits`` gives some nodes another bit width than ``bits`` (the builder's per-node configuration);
    ``store`` holds each quantized tensor (in memory by default; ``llmflow.export.spill.SpillFile`` writes it out).

    ``after_each`` is called once a weight is quantized and its float tensor dropped (the export pages out the
    weight files there: ``llmflow.export.residency``).
    """
    from tqdm.auto import tqdm

    graph = model.graph
    excluded = set(nodes_to_exclude)
    node_bits = dict(node_bits or {})
    model.opset_imports[MS_DOMAIN] = 1
    # As the builder: the body at ``bits`` first (upgraded nodes left out), then one pass per upgraded bit width.
    passes = [(bits, lambda node: node.name not in node_bits)]
    for width in dict.fromkeys(node_bits.values()):
        passes.append((width, lambda node, width=width: node_bits.get(node.name) == width))
    for width, selected in passes:
        quantizer = _block_quantizer(width, block_size, is_symmetric, accuracy_level)
        targets = [node for node in graph if _eligible(node, excluded) and selected(node)]
        for node in tqdm(targets, desc=f"int{width} MatMul", unit="weight"):
            _quantize_node(graph, node, quantizer, width, block_size, accuracy_level, weight_transform, store)
            if after_each is not None:
                after_each()
        # As the quantizer's clean_initializers after each pass: drop every initializer nothing reads.
        outputs = {value.name for value in graph.outputs}
        for name in [name for name, value in graph.initializers.items() if not value.uses() and name not in outputs]:
            graph.initializers.pop(name)
    return model


def streaming_to_nbits(
    builder_model: Any,
    after_each: Callable[[], object] | None = None,
    stock_to_nbits: Callable[[Any], ir.Model] | None = None,
    weight_transform: WeightTransform | None = None,
    store: TensorStore = in_memory,
) -> ir.Model:
    """A drop-in for the builder's ``Model.to_nbits`` that quantizes one weight at a time (see the module doc).

    Settings outside that path (``applies_to``) go to ``stock_to_nbits``, the builder's own method.
    """
    if not applies_to(builder_model):
        if weight_transform is not None:
            raise ValueError(
                "GPTQ (int4_algo=gptq) and activation-aware clipping (int4_clip=activation) need the streaming "
                "quantization path, and these settings take the builder's own: a tied embedding shared with a "
                "symmetric int4 LM head is quantized as a Gather too; pass int4_symmetric=false, or "
                "int4_mixed_precision with last_matmul, or int4_algo=default"
            )
        if stock_to_nbits is None:
            raise ValueError("these quantization settings need the builder's own to_nbits, and none was given")
        logger.info("quantization options outside the streaming path; using the builder's own to_nbits")
        return stock_to_nbits(builder_model)
    attrs = builder_model.quant_attrs
    customized = _customized(builder_model)
    return quantize_graph(
        builder_model.model,
        bits=attrs["bits"],
        block_size=attrs["matmul_block_size"],
        is_symmetric=attrs["is_symmetric"],
        accuracy_level=attrs["accuracy_level"],
        nodes_to_exclude=list(attrs["nodes_to_exclude"]),
        after_each=after_each,
        node_bits={name: config["bits"] for name, config in customized.items()},
        weight_transform=weight_transform,
        store=store,
    )


def add_int8_nodes(builder_model: Any, recipe: Int4Recipe | None) -> None:
    """Add the recipe's own int8 selections (``qkv``) to the builder model's per-node bit widths."""
    if recipe is None:
        return
    names = [node.name for node in builder_model.model.graph if node.op_type == "MatMul"]
    upgraded = recipe.int8_nodes(names)
    if upgraded:
        config = dict(_customized(builder_model))
        config.update({name: {"bits": 8} for name in upgraded if name not in config})
        builder_model.int4_customized_weight_config = config


@contextmanager
def streaming_quantization(
    after_each: Callable[[], object] | None = None,
    recipe: Int4Recipe | None = None,
    weight_transform: WeightTransform | None = None,
    spill_dir: Path | None = None,
) -> Iterator[None]:
    """Within this block the builder quantizes with ``streaming_to_nbits``; outside it, as shipped.

    ``after_each`` is called after each weight is quantized (see ``quantize_graph``); ``recipe``'s own int8
    selections are added to the builder's per-node bit widths first (``add_int8_nodes``), for either pass;
    ``weight_transform`` changes each int4 weight before it is quantized (see ``_quantize_node``). With
    ``spill_dir``, the quantized tensors are written to a file there as they are made (``llmflow.export.spill``):
    the folder must outlive the builder's save, which copies them into ``model.onnx.data``.
    """
    with ExitStack() as stack:
        store = stack.enter_context(SpillFile(spill_dir)) if spill_dir is not None else in_memory

        def to_nbits(builder_model: Any, stock: Callable[[Any], ir.Model]) -> ir.Model:
            add_int8_nodes(builder_model, recipe)
            return streaming_to_nbits(builder_model, after_each, stock, weight_transform, store)

        stack.enter_context(to_nbits_replaced(to_nbits))
        yield
