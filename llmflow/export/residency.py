"""Give back the pages of a model's weight files that the export has finished reading.

transformers 5 maps safetensors files into memory instead of reading them: a weight is a view of a private file
mapping, and each page the builder reads stays resident, and counted in the process's RSS, for as long as the
mapping lives. The mapping lives until the last weight of the file is freed, so by the end of quantization the
whole file (7.6 GB for Phi-3-mini in bf16) is resident next to the int4 output, although every quantized weight is
done with. The export asks the kernel to page those mappings out as it goes (``madvise(MADV_PAGEOUT)``, Linux 5.4+).

``MADV_PAGEOUT`` loses nothing: a clean page is dropped and read again from the file if it is touched again, and a
page the process wrote to (copy-on-write) is only ever swapped, never discarded, so with no swap it stays. It is a
hint: where the kernel does not know it (``EINVAL``) or the platform is not Linux, nothing happens and the export
uses the memory it did before. No library exposes ``madvise`` on an address range it did not map itself (Python's
``mmap.madvise`` needs the ``mmap`` object, and these mappings belong to safetensors), hence ``ctypes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import sys
from functools import cache
from pathlib import Path

from llmflow.sources.hub import WEIGHT_SUFFIXES

logger = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # <asm-generic/mman-common.h>, Linux 5.4


def weight_files(folder: Path) -> set[str]:
    """The real paths of the weight files in ``folder``, links followed: a Hugging Face cache snapshot links each
    file to a blob named by its sha256, and the process's maps name the blob."""
    return {str(path.resolve()) for path in Path(folder).rglob("*") if path.name.endswith(WEIGHT_SUFFIXES)}


def mapped_ranges(folder: Path, maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """Address ranges ``(start, length)`` of this process's mappings of the weight files in ``folder``."""
    targets = weight_files(folder)
    ranges = []
    try:
        lines = maps.read_text().splitlines() if targets else []
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] not in targets:
            continue
        start, end = (int(address, 16) for address in fields[0].split("-"))
        ranges.append((start, end - start))
    return ranges


@cache
def _madvise():  # noqa: ANN202 - a ctypes function, or None where there is none
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    function = libc.madvise
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_UNSUPPORTED: list[bool] = []


def page_out(folder: Path) -> int:
    """Page out this process's mappings of the weight files under ``folder``; return the bytes of address range advised.

    Returns 0 when there is nothing mapped, or the kernel or platform cannot take the hint (then it is not tried again).
    """
    madvise = _madvise()
    if madvise is None or _UNSUPPORTED:
        return 0
    advised = 0
    for start, length in mapped_ranges(folder):
        if madvise(start, length, MADV_PAGEOUT) == 0:
            advised += length
            continue
        error = ctypes.get_errno()
        if error == errno.EINVAL:
            logger.info("this kernel does not take MADV_PAGEOUT; weight pages stay resident during the export")
            _UNSUPPORTED.append(True)
            return advised
        if error != errno.ENOMEM:  # ENOMEM: the range was unmapped between reading the maps and the call
            logger.debug("madvise(MADV_PAGEOUT) on %#x+%d failed: %s", start, length, errno.errorcode.get(error, error))
    return advised


def trim_heap() -> bool:
    """Give the C heap's free memory back to the kernel (glibc's ``malloc_trim(0)``); whether it could.

    The calibration (``llmflow.export.calibrate``) frees gigabytes of float32 layers and working arrays, in pieces
    of a few MB that glibc may keep in its heap for reuse once its mmap threshold has grown; the builder starts
    after it. Measured here with it: RSS 0.47 GB once a 1 B model is calibrated (its peak was 3.3 GB); not measured
    without it, so it is a guard, not a figure. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
