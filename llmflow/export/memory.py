"""Pre-flight memory check of the export: estimate what it needs, compare with what the machine has, fail at once.

The estimate comes from the weight bytes in the download manifest and the model's dtype (config.json), so it runs
before any weight is fetched. Figures per parameter, measured on Phi-3-mini's shape (see README, "At full size"):
- transformers maps the weight files; the export reads each weight once and pages it out when it is quantized
  (``llmflow.export.residency``), so the weights are not resident all at once. What the builder materialises while
  it builds the graph, before the first weight is quantized, is the peak: about a third of the weight bytes
  (``BUILD_SHARE``) with the fp32 embedding table;
- int4/int8 output goes to a scratch file as each weight is quantized (``llmflow.export.spill``), so it is not
  counted; fp16/fp32 output is not quantized one weight at a time, so it and the mapped weights count whole;
- the stock builder (``streaming=False``) also holds the whole graph in fp32 (4 bytes a parameter).
Measured peak for Phi-3-mini int4 (``bench.scale.export_check``): 4.04 GiB round-to-nearest, 4.22 GiB with GPTQ (the
default); this estimate gives 4.15 and 4.40 GiB.
What the machine has: ``MemAvailable`` from ``/proc/meminfo``, or less when a cgroup (v2 or v1) limits the process.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmflow.errors import InputError
from llmflow.sources.folder import model_dir_from_run, read_manifest
from llmflow.sources.hub import WEIGHT_SUFFIXES

logger = logging.getLogger(__name__)

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# int4 weights with fp32 scales per block of 32: 0.5 + 4 / 32 bytes a weight; int8: 1 + 4 / 32.
OUTPUT_BYTES_PER_WEIGHT = {"int4": 0.625, "int8": 1.125, "fp16": 2, "fp32": 4}
# The interpreter, torch, onnxruntime and the per-MatMul working set (measured: about 1.5 GiB at 3.8 B).
OVERHEAD_BYTES = int(1.5 * GIB)
# What the builder holds while it builds the graph (touched weight pages, materialised tensors), per weight byte:
# fitted to Phi-3-mini's measured 4.04 GiB peak, which comes before the first weight is quantized.
BUILD_SHARE = 0.32
# Precisions that the streaming pass quantizes one weight at a time, paging each weight out after it.
STREAMED = ("int4", "int8")
# A calibrated export (GPTQ, the default) measured 4.22 GiB at Phi-3-mini's size against 4.04 GiB without the
# calibration: what the calibration leaves behind (allocator and BLAS buffers) and the GPTQ rows read per MatMul.
CALIBRATED_EXTRA = GIB // 4
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


@dataclass(frozen=True)
class MemoryFound:
    available: int
    where: str


@dataclass(frozen=True)
class MemoryNeed:
    needed: int
    parameters: int
    dtype: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _cgroup_headroom(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Limit minus usage of this process's memory cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append((cgroup_root / path.lstrip("/"), "memory.max", "memory.current"))
            candidates.append((cgroup_root / "unified" / path.lstrip("/"), "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            folder = cgroup_root / "memory" / path.lstrip("/")
            candidates.append((folder, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    headrooms = []
    for folder, limit_name, usage_name in candidates:
        limit = _read_int(folder / limit_name)
        if limit is None or limit >= UNLIMITED:
            continue
        headrooms.append(limit - (_read_int(folder / usage_name) or 0))
    return min(headrooms) if headrooms else None


def memory_found(
    meminfo: Path = Path("/proc/meminfo"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> MemoryFound:
    """What this process can still allocate: ``MemAvailable``, or a cgroup's headroom when that is smaller."""
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    found = MemoryFound(available, "MemAvailable")
    headroom = _cgroup_headroom(cgroup_root, proc_cgroup)
    if headroom is not None and headroom < available:
        found = MemoryFound(headroom, "cgroup limit")
    return found


def calibration_need(config: dict[str, Any], parameters: int) -> int:
    """Memory of the layer-at-a-time calibration (``llmflow.export.calibrate``, for GPTQ and clipping): the float32
    embedding, one float32 decoder layer and GPTQ's float32 copy of its largest weights, and the float64 input sums
    of one layer (three of the hidden size, one of the MLP's)."""
    hidden = int(config.get("hidden_size", 0))
    intermediate = int(config.get("intermediate_size", 0)) or 4 * hidden
    embedding = int(config.get("vocab_size", 0)) * hidden
    heads = 1 if config.get("tie_word_embeddings") else 2
    layer = max(0, parameters - heads * embedding) // max(1, int(config.get("num_hidden_layers", 1)))
    return OVERHEAD_BYTES + 4 * (embedding + 2 * layer) + 8 * (3 * hidden * hidden + intermediate * intermediate)


def export_need(
    config: dict[str, Any], weight_bytes: int, precision: str, streaming: bool = True, calibrated: bool = False
) -> MemoryNeed:
    """Memory the export of a model needs, from its config and the bytes of its weight files.

    ``calibrated``: GPTQ or activation-aware clipping first reads a calibration text one decoder layer at a time,
    and frees that before the builder starts; the peak is the larger of the two, the export's a little higher
    (``CALIBRATED_EXTRA``).
    """
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    parameters = weight_bytes // DTYPE_BYTES.get(dtype, 4)
    embedding = int(config.get("vocab_size", 0)) * int(config.get("hidden_size", 0))
    needed = OVERHEAD_BYTES + BUILD_SHARE * weight_bytes + 4 * embedding
    if not (streaming and precision in STREAMED):
        needed += weight_bytes + int(parameters * OUTPUT_BYTES_PER_WEIGHT[precision])
    if not streaming:
        needed += 4 * parameters
    if calibrated:
        needed = max(needed + CALIBRATED_EXTRA, calibration_need(config, parameters))
    return MemoryNeed(int(needed), parameters, dtype)


def check_export_memory(need: MemoryNeed, found: MemoryFound, precision: str) -> None:
    """Raise ``InputError`` (one line) when the export would not fit, before it starts."""
    if need.needed <= found.available:
        return
    raise InputError(
        f"export_onnx needs about {need.needed / GIB:.1f} GiB of memory for {need.parameters / 1e9:.2f} B "
        f"{need.dtype} parameters as {precision}, and this machine has {found.available / GIB:.1f} GiB "
        f"({found.where}); pass onnx_source=<a prebuilt ONNX folder or hf://<org>/<repo>/<subfolder>>, use a "
        "machine with more memory, or run the export_onnx step alone on a larger machine"
    )


def config_of(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())


def preflight_memory(download_run_id: str, precision: str, calibrated: bool = False) -> None:
    """Fail at once, in one line, when this machine has too little memory to export the download run's model.

    Reads only the run's manifest and config.json, so it runs before any weight is fetched.
    """
    weight_bytes = sum(
        f["size"] for f in read_manifest(download_run_id)["files"] if f["file"].endswith(WEIGHT_SUFFIXES)
    )
    with tempfile.TemporaryDirectory(prefix="llmflow-config-") as tmp:
        config = config_of(model_dir_from_run(download_run_id, Path(tmp), weights=False))
    need, found = export_need(config, weight_bytes, precision, calibrated=calibrated), memory_found()
    logger.info("export_onnx: needs about %.1f GiB, %.1f GiB available", need.needed / 2**30, found.available / 2**30)
    check_export_memory(need, found, precision)
