"""Databricks job task (``job.json``): run entry point ``main`` of the Git checkout this file lives in.

The Jobs API has no plain shell task, so this Python script task runs
``mlflow run <checkout> -e main --env-manager local`` followed by the task's parameters unchanged
(``--experiment-name ...``, ``-P key=value`` ...). ``local`` because the task's libraries already hold
requirements.txt: MLflow runs each step with the ``python`` on PATH, which is put first here.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path


def project_root() -> Path:
    """The checkout's root: two levels above this file.

    Databricks runs a Python script task through ``exec(compile(source, path, "exec"))``, which leaves
    ``__file__`` undefined; the code object still carries the path the source was compiled from.
    """
    return Path(inspect.currentframe().f_code.co_filename).resolve().parents[2]


def mlflow_run_command(args: list[str]) -> list[str]:
    """The ``mlflow run`` command line for entry point ``main`` of the checkout, with ``args`` appended."""
    return [sys.executable, "-m", "mlflow", "run", str(project_root()), "-e", "main", "--env-manager", "local", *args]


def main(args: list[str]) -> None:
    """Run ``main``; a failed run raises ``CalledProcessError``, which fails the task."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(mlflow_run_command(args), env=env, check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
