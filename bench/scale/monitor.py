"""Peak RSS of a process tree and the peak size of a folder, sampled in a background thread.

The kernel's own figures are read where they exist: a process's ``VmHWM`` is its exact peak, but only for that
process, so the tree's peak is the sampled sum of ``VmRSS`` over the process and its descendants (every
``interval`` seconds), and never below the largest ``VmHWM`` seen.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30


def status_kib(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM, ...); 0 when the process or the line is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now running."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_map(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (allocated size, so sparse files count what they hold)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_blocks * 512
            except OSError:
                continue
    return total


@dataclass
class TreeSampler:
    """Samples the RSS of ``pid``'s process tree and the size of ``folders`` until ``stop()``."""

    pid: int
    folders: dict[str, Path] = field(default_factory=dict)
    interval: float = 0.5
    peak_rss: int = 0
    peak_folder: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = descendants(self.pid)
        rss = sum(status_kib(p, "VmRSS") for p in pids) * 1024
        hwm = max((status_kib(p, "VmHWM") for p in pids), default=0) * 1024
        self.peak_rss = max(self.peak_rss, rss, hwm)
        for name, folder in self.folders.items():
            self.peak_folder[name] = max(self.peak_folder.get(name, 0), folder_bytes(folder))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def run_sampled(argv: list[str], folders: dict[str, Path] | None = None, **popen) -> tuple[int, float, TreeSampler]:
    """Run ``argv`` to its end while sampling its tree; return its exit code, wall seconds and the sampler."""
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(argv, **popen)
    sampler = TreeSampler(process.pid, folders or {}).start()
    code = process.wait()
    sampler.stop()
    return code, time.perf_counter() - started, sampler
