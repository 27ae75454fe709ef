"""How an int4 export quantizes: one typed recipe, turned into the onnxruntime-genai builder's options in one place.

The builder's weight-only quantization choices, as ``export_onnx`` (and ``main``) parameters:

- ``int4_algo``: the base method: ``gptq`` (GPTQ on a calibration text, onto the default method's grid:
  ``llmflow.export.gptq``), ``default`` (MLAS round-to-nearest, the builder's default), ``rtn`` or ``k_quant``
  (onnxruntime's ``RTN``/``k_quant`` weight-only quantizers);
- ``int4_mixed_precision``: which MatMuls are int8 instead of int4, a comma-separated list of
  ``last_matmul`` (the LM head), ``mixed_layers`` (the builder's llama.cpp-style choice: qkv and down_proj of the
  first and last eighth of layers and every third layer between) and ``qkv`` (the attention input projection of
  every layer), or ``none``;
- ``int4_symmetric``: ``true`` (int4 with a scale per block) or ``false`` (uint4 with a zero point per block);
- ``int4_block_size`` and ``int4_accuracy_level`` (the int4 MatMul's compute type: 4 is int8);
- ``int4_clip``: ``none``, or ``activation`` (each int4 block's range clipped where that lowers the layer's output
  error on calibration text: ``llmflow.export.clip``; with ``int4_algo=default`` only).

``qkv`` is this project's selector, not the builder's: attention's value projection is the most
quantization-sensitive MatMul of a Llama-family layer (measured on SmolLM2-135M-Instruct and on a rotated copy of it,
README "Choosing the int4 recipe"), and the builder fuses q, k and v into one ``qkv_proj`` MatMul. It is applied
where the builder quantizes (``llmflow.export.nbits``) by adding those nodes to the builder's per-node bit widths,
which both its own pass and the streaming one honour.

A tied embedding is shared with the LM head only for a symmetric int4 head: the builder's shared quantized
embedding assumes signed int4 (asymmetric weights give a model that fails to load, "Type (tensor(uint8)) of output
arg (/model/embed_tokens/Reshape/output_0)"), so with ``int4_symmetric=false`` or an int8 head the embedding keeps
its own float table.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmflow.errors import InputError

ALGORITHMS = ("gptq", "default", "rtn", "k_quant")
# Methods this project runs itself, before the builder's default quantizer writes its format.
OWN_ALGORITHMS = ("gptq",)
CLIPS = ("none", "activation")
# Selectors the builder knows (matmul_mixed_precision) and the one this project adds.
BUILDER_SELECTORS = ("last_matmul", "mixed_layers")
PROJECT_SELECTORS = ("qkv",)
SELECTORS = BUILDER_SELECTORS + PROJECT_SELECTORS
NONE = "none"
QKV_SUFFIXES = ("/attn/qkv_proj/MatMul", "/attn/q_proj/MatMul", "/attn/k_proj/MatMul", "/attn/v_proj/MatMul")


def parse_mixed_precision(name: str, text: str) -> tuple[str, ...]:
    """``"last_matmul,qkv"`` -> the selectors made int8, in the order of ``SELECTORS``; ``"none"`` -> ``()``."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    accepted = f"'{NONE}' or a comma-separated list of {', '.join(SELECTORS)}"
    if parts == [NONE]:
        return ()
    unknown = [part for part in parts if part not in SELECTORS]
    if not parts or unknown:
        raise InputError(f"{name} '{text}' is not accepted; expected {accepted}")
    return tuple(selector for selector in SELECTORS if selector in parts)


def check_mixed_precision(name: str, value: str) -> None:
    parse_mixed_precision(name, value)


@dataclass(frozen=True)
class Int4Recipe:
    """One int4 quantization recipe: base method, int8 placements, symmetry, block size, accuracy level."""

    algo: str = "default"
    int8: tuple[str, ...] = ()
    symmetric: bool = True
    block_size: int = 32
    accuracy_level: int = 4
    clip: str = "none"

    def builder_options(self, tied_embeddings: bool) -> list[str]:
        """The builder's ``KEY=VALUE`` extra options for this recipe."""
        # The keys onnxruntime-genai 0.18 reads: its help text still names int4_block_size, int4_accuracy_level and
        # int4_algo_config as aliases, but the builder ignores them in silence (tests/test_export_nbits.py checks
        # the block size and accuracy level of every quantized MatMul).
        options = [f"block_size={self.block_size}", f"accuracy_level={self.accuracy_level}"]
        if self.algo not in ("default", *OWN_ALGORITHMS):
            options.append(f"algo_config={self.algo}")
        if not self.symmetric:
            options.append("is_symmetric=false")
        placements = [f"{selector}:int8" for selector in self.int8 if selector in BUILDER_SELECTORS]
        if placements:
            options.append("matmul_mixed_precision=" + ",".join(placements))
        if tied_embeddings and (not self.symmetric or "last_matmul" in self.int8):
            options.append("shared_embeddings=false")
        return options

    def int8_nodes(self, node_names: list[str]) -> list[str]:
        """The nodes among ``node_names`` that this project's selectors (``qkv``) make int8."""
        if "qkv" not in self.int8:
            return []
        return [name for name in node_names if name.endswith(QKV_SUFFIXES)]

    @property
    def calibrated(self) -> bool:
        """Whether the export first reads a calibration text with the float model (``gptq``, ``int4_clip``)."""
        return self.algo == "gptq" or self.clip != "none"

    @property
    def label(self) -> str:
        """A short name for the recipe, e.g. ``default-sym-b32-a4+last_matmul+qkv`` (model names, tables)."""
        mixed = "".join(f"+{selector}" for selector in self.int8)
        clip = "" if self.clip == "none" else f"+clip-{self.clip}"
        symmetry = "sym" if self.symmetric else "asym"
        return f"{self.algo}-{symmetry}-b{self.block_size}-a{self.accuracy_level}{mixed}{clip}"


# The export's default recipe; ``ExportSettings``' defaults are its fields (``llmflow.export_onnx``). Chosen on the
# real model and its rotated copy (README "Choosing the int4 recipe", ``bench.recipes``): GPTQ onto uint4 with a zero
# point per block of 32, int8 for the LM head, every layer's qkv projection and llama.cpp's sensitive layers.
DEFAULT_INT4_RECIPE = Int4Recipe(algo="gptq", int8=("last_matmul", "mixed_layers", "qkv"), symmetric=False)
# The export parameters that only the recipe has (block size and accuracy level are older, and read on their own).
INT4_RECIPE_PARAMS = ("int4_algo", "int4_mixed_precision", "int4_symmetric", "int4_clip")


def mixed_precision_text(int8: tuple[str, ...]) -> str:
    """The ``int4_mixed_precision`` parameter for the selectors ``int8``."""
    return ",".join(int8) or NONE


def recipe_from(
    algo: str, mixed_precision: str, symmetric: bool, block_size: int, accuracy_level: int, clip: str = "none"
) -> Int4Recipe:
    """An ``Int4Recipe`` from the parameters as ``export_onnx`` takes them (already checked)."""
    return Int4Recipe(
        algo=algo,
        int8=parse_mixed_precision("int4_mixed_precision", mixed_precision),
        symmetric=symmetric,
        block_size=block_size,
        accuracy_level=accuracy_level,
        clip=clip,
    )
