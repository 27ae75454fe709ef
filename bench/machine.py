"""How busy the machine is with work that is not the benchmark's.

On a 2-core machine another process that takes one core slows onnxruntime-genai and, far more, torch, whose
threads wait on each other (measured here: transformers generate fell from 17 to 3.5 tokens/s with one core
taken). So each configuration records the CPU that other processes used while it ran, and the benchmark can
wait for a quiet machine before each configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.2  # other processes' CPU, in cores, below which the machine counts as quiet


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that it has waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds a running process has used (``/proc/<pid>/stat`` utime + stime); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class OtherLoad:
    """Measures, from creation to ``cores()``, the CPU that processes other than ours used, in cores."""

    wall: float = field(default_factory=time.monotonic)
    busy: float = field(default_factory=busy_cpu_seconds)
    own: float = field(default_factory=own_cpu_seconds)

    def cores(self, unaccounted_own: float = 0.0) -> float:
        """``unaccounted_own``: CPU of our processes that ``own_cpu_seconds`` cannot see (unwaited descendants)."""
        wall = time.monotonic() - self.wall
        others = (busy_cpu_seconds() - self.busy) - (own_cpu_seconds() - self.own) - unaccounted_own
        return max(others, 0.0) / wall if wall > 0 else 0.0


def wait_for_quiet(max_seconds: float, window: float = 1.0) -> float | None:
    """Wait until other processes use less than ``QUIET_CORES`` over ``window`` s, at most ``max_seconds``.

    Returns the other load of the last window, in cores; ``None`` without looking when ``max_seconds`` is 0.
    """
    if max_seconds <= 0:
        return None
    deadline = time.monotonic() + max_seconds
    while True:
        meter = OtherLoad()
        time.sleep(window)
        cores = meter.cores()
        if cores < QUIET_CORES or time.monotonic() >= deadline:
            if cores >= QUIET_CORES:
                logger.warning("machine still busy after %.0f s (%.2f cores in other processes)", max_seconds, cores)
            return cores


def measure_quietly(name: str, run_once: Callable[[], dict[str, Any]], quiet_wait_s: float, retries: int) -> dict:
    """Run a configuration after waiting for a quiet CPU; again, up to ``retries`` times, while others disturbed it.

    ``run_once`` returns a raw result with ``other_cpu_cores``. Returns the attempt that others disturbed least,
    with ``quiet_before``, ``quiet_wait_seconds`` (all attempts) and ``attempts_other_cpu_cores``.
    """
    attempts, waited = [], 0.0
    for attempt in range(retries + 1):
        started = time.monotonic()
        quiet_before = wait_for_quiet(quiet_wait_s)
        waited += time.monotonic() - started
        attempts.append({**run_once(), "quiet_before": quiet_before})
        other = attempts[-1]["other_cpu_cores"]
        if other < QUIET_CORES:
            break
        if attempt < retries:
            logger.warning("%s: other processes took %.2f cores; measuring it again", name, other)
    best = min(attempts, key=lambda a: a["other_cpu_cores"])
    return {**best, "quiet_wait_seconds": waited, "attempts_other_cpu_cores": [a["other_cpu_cores"] for a in attempts]}


def write_json(out: Path, result: Any, indent: int = 2) -> Any:
    """Write ``result`` as JSON to ``out`` (its folder made), and return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent, default=str))
    return result


def start_logging() -> None:
    """INFO logging with times, as every benchmark prints its progress."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parse_run_options(
    parser: argparse.ArgumentParser, out: Path, busy_retries: int | None = None, llama_cpp: bool = False
) -> argparse.Namespace:
    """Add the options the benchmarks share, parse the command line and start logging: ``--quiet-wait`` and
    ``--busy-retries`` for one that measures quietly (``measure_quietly``), ``--llama-cpp`` for one that builds
    llama.cpp, and ``--out``."""
    if busy_retries is not None:
        parser.add_argument("--quiet-wait", type=float, default=60.0, help="Seconds to wait for a quiet CPU (0: none).")
        parser.add_argument(
            "--busy-retries", type=int, default=busy_retries, help="Measure again while others took CPU."
        )
    if llama_cpp:
        parser.add_argument("--llama-cpp", type=Path, default=None, help="The vendored llama.cpp tree of the sdist.")
    parser.add_argument("--out", type=Path, default=out, help="JSON file to write the results to.")
    args = parser.parse_args()
    start_logging()
    return args
