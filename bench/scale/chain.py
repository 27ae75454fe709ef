"""``main`` on a model, with each step's wall time, peak RSS, artifact-store growth and peak temporary disk.

``main`` runs its steps one after another, each as ``python -m steps.<name> ...`` under ``mlflow run``. A sampler
thread walks ``main``'s process tree every ``interval`` seconds, finds the step processes by their command line,
and charges to each step the RSS of its process tree, the growth of the artifact store while it ran, and the size
of the temporary folder (``TMPDIR`` is a folder of the benchmark's own, so nothing else writes there).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.scale.monitor import cmdline, descendants, folder_bytes, status_kib
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

# A step runs as `python steps/<name>.py` (MLproject) or `python -m steps.<name>` (main itself, deploy/kubernetes).
STEP_PATTERN = re.compile(r"\bsteps[./](\w+)\b")
FLAVOUR_PATTERN = re.compile(r"--registered-model-name \S+-(onnx|transformers)\b")


@dataclass
class StepFigures:
    step: str
    started: float = 0.0
    ended: float = 0.0
    peak_rss: int = 0
    store_at_start: int = 0
    store_at_end: int = 0
    peak_tmp: int = 0

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def store_added(self) -> int:
        return self.store_at_end - self.store_at_start


def step_key(command: str) -> str | None:
    """``evaluate:onnx`` for an evaluate of the ONNX flavour, the step's name for any other step, None for main."""
    match = STEP_PATTERN.search(command)
    if not match or match.group(1) == "main":
        return None
    flavour = FLAVOUR_PATTERN.search(command)
    kind = {"evaluate": ":", "register": ":"}.get(match.group(1))
    return f"{match.group(1)}{kind}{flavour.group(1)}" if kind and flavour else match.group(1)


class ChainSampler:
    """Follows ``main``'s process tree and charges what it sees to the step running at the time."""

    def __init__(self, root_pid: int, store: Path, tmp: Path, interval: float = 1.0, progress: Path | None = None):
        self.root_pid, self.store, self.tmp, self.interval = root_pid, store, tmp, interval
        self.progress = progress
        self.steps: dict[str, StepFigures] = {}
        self.peak_rss = 0
        self.peak_tmp = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        now = time.perf_counter()
        pids = descendants(self.root_pid)
        self.peak_rss = max(self.peak_rss, sum(status_kib(p, "VmRSS") for p in pids) * 1024)
        tmp = folder_bytes(self.tmp)
        self.peak_tmp = max(self.peak_tmp, tmp)
        tops = {}
        for pid in pids:
            key = step_key(cmdline(pid))
            if key and key not in tops.values():
                tops[pid] = key
        store = None
        for pid, key in tops.items():
            figures = self.steps.get(key)
            if figures is None:
                store = folder_bytes(self.store) if store is None else store
                figures = self.steps[key] = StepFigures(key, started=now, store_at_start=store)
            tree = descendants(pid)
            rss = sum(status_kib(p, "VmRSS") for p in tree) * 1024
            hwm = max((status_kib(p, "VmHWM") for p in tree), default=0) * 1024
            figures.peak_rss = max(figures.peak_rss, rss, hwm)
            figures.peak_tmp = max(figures.peak_tmp, tmp)
            figures.ended = now
        for key, figures in self.steps.items():
            if key not in tops.values() and figures.store_at_end == 0:
                figures.store_at_end = folder_bytes(self.store)
        if self.progress:
            # What has been seen so far, for a run that is stopped before it ends.
            snapshot = [{**asdict(f), "wall": round(f.wall, 1)} for f in self.steps.values()]
            try:
                self.progress.write_text(
                    json.dumps({"peak_rss": self.peak_rss, "peak_tmp": self.peak_tmp, "steps": snapshot})
                )
            except OSError as error:  # a full disk must not stop the sampling, whose figures are the point
                logger.warning("bench-scale: cannot write %s: %s", self.progress, error)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> ChainSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for figures in self.steps.values():
            figures.store_at_end = figures.store_at_end or folder_bytes(self.store)


def run_main(
    params: dict[str, str], workdir: Path, interval: float = 1.0, extra_env: dict[str, str] | None = None
) -> dict:
    """Run ``python -m steps.main`` with ``params`` against a new store under ``workdir``; return its figures."""
    store, tmp = workdir / "artifacts", workdir / "tmp"
    store.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **(extra_env or {}),
    }
    experiment = subprocess.run(
        [sys.executable, "-c", f"import mlflow; print(mlflow.create_experiment('scale', '{store.as_uri()}'))"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env["MLFLOW_EXPERIMENT_ID"] = experiment
    argv = [sys.executable, "-m", "steps.main"]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    store_before = folder_bytes(store)
    started = time.perf_counter()
    with (workdir / "main.log").open("w") as log:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = ChainSampler(process.pid, store, tmp, interval, workdir / "progress.json").start()
        code = process.wait()
        sampler.stop()
    wall = time.perf_counter() - started
    if code:
        tail = (workdir / "main.log").read_text().strip().splitlines()[-3:]
        raise SystemExit(f"main failed ({code}); last lines of {workdir / 'main.log'}: {' | '.join(tail)}")
    steps = [
        {**asdict(f), "wall": round(f.wall, 1), "store_added": f.store_added}
        for f in sorted(sampler.steps.values(), key=lambda f: f.started)
    ]
    return {
        "wall": round(wall, 1),
        "peak_rss": sampler.peak_rss,
        "peak_tmp": sampler.peak_tmp,
        "store_added": folder_bytes(store) - store_before,
        "steps": steps,
        "tracking_uri": env["MLFLOW_TRACKING_URI"],
        "experiment_id": experiment,
    }


def write_json(path: Path, figures: dict) -> Path:
    path.write_text(json.dumps(figures, indent=1))
    return path
