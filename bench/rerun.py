"""How long ``main`` takes when nothing changed: every step is reused, and the time is all overhead.

    python -m bench.rerun [--reruns 3] [--out bench-results/rerun.json]

Runs ``mlflow run . -e main`` on the tiny Phi-3 (``make tiny``) into a fresh SQLite store once, cold, then again
``--reruns`` times with nothing changed, and prints for each: the wall time of the whole command, the time of the
``main`` run inside it (its MLflow run's start to end: reuse checks and the summary), and what is left, which is
``mlflow run`` itself (its import, the project's environment check, the run's creation). Also the import time of
``llmflow.main`` alone in a fresh interpreter. Figures, not a test: the target (under 10 s for a rerun) is read here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import parse_run_options, write_json
from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_STEP

TINY = PROJECT_ROOT / "build" / "tiny-phi3"
DEFAULT_OUT = PROJECT_ROOT / "bench-results" / "rerun.json"


def run_main(store: Path) -> tuple[float, float]:
    """One ``mlflow run . -e main`` into ``store``: (wall seconds, seconds of the newest ``main`` run)."""
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "main", "--env-manager", "local"]
    command += ["-P", f"model={TINY}", "-P", "registered_model_name=bench-rerun"]
    started = time.perf_counter()
    subprocess.run(command, cwd=store, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    client = mlflow.MlflowClient(tracking_uri=uri)
    [main] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{TAG_STEP}` = 'main'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return wall, (main.info.end_time - main.info.start_time) / 1000


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import llmflow.main; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description="The unchanged rerun of main on the tiny Phi-3.")
    parser.add_argument("--reruns", type=int, default=3, help="Reruns with nothing changed, after the cold run.")
    args = parse_run_options(parser, DEFAULT_OUT)
    if not (TINY / "config.json").is_file():
        sys.exit(f"{TINY} is missing: run `make tiny` first")
    with tempfile.TemporaryDirectory(prefix="llmflow-bench-rerun-") as tmp:
        rows = [("cold", *run_main(Path(tmp)))]
        rows += [(f"rerun {n}", *run_main(Path(tmp))) for n in range(1, args.reruns + 1)]
    imports = import_seconds()
    print("| run | wall s | main run s | mlflow run itself s |\n|---|---:|---:|---:|")
    for name, wall, inside in rows:
        print(f"| {name} | {wall:.1f} | {inside:.1f} | {wall - inside:.1f} |")
    print(f"import llmflow.main: {imports:.2f} s")
    reruns = [wall for name, wall, _ in rows if name != "cold"]
    write_json(
        args.out,
        {
            "runs": [{"run": n, "wall_s": w, "main_run_s": i} for n, w, i in rows],
            "rerun_wall_s_median": sorted(reruns)[len(reruns) // 2] if reruns else None,
            "import_llmflow_main_s": imports,
        },
    )


if __name__ == "__main__":
    main()
