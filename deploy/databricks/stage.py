"""Assemble the Databricks Spark job project: ``deploy/databricks/MLproject`` with the code it runs.

    python deploy/databricks/stage.py build/databricks-project
    mlflow run build/databricks-project -b databricks --backend-config deploy/databricks/cluster-spec.json \
        -e download -P model=microsoft/Phi-3-mini-4k-instruct

MLflow uploads only the project folder it is given, and the root MLproject (which has a ``conda_env``)
cannot be in this format, which allows no environment section. So the staged folder holds this
folder's MLproject and the files the steps read: ``llmflow/``, ``steps/``, ``data/`` and the pinned
environment files (part of each step's code digest, so runs made there and here can be reused).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("llmflow", "steps", "data", "requirements.txt", "conda.yaml")
IGNORED = shutil.ignore_patterns("__pycache__", "mlruns", "*.pyc")


def stage(out: Path) -> Path:
    """Write the project to ``out`` (replacing what is there) and return it."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(ROOT / "deploy" / "databricks" / "MLproject", out / "MLproject")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=IGNORED)
        else:
            shutil.copy2(source, out / name)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python deploy/databricks/stage.py OUT_DIR")
    print(stage(Path(sys.argv[1])))
