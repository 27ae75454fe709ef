"""llmflow: take a Hugging Face chat model to production with MLflow.

The step modules (``download``, ``export_onnx``, ``log_transformers``, ``log_pyfunc``, ``register``,
``evaluate``, ``main``, ``rollback``, ``reproduce``) sit at the top, one per MLproject entry point; the
support code lives in subpackages (see the README's "Where things live").
"""

import os
import sys
from pathlib import Path

# The project's root: MLproject, steps/ and data/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Progress bars only for work a person waits on: a bar appears once its work has lasted 2 s, and where the console is
# a log rather than a terminal (CI, Databricks, `kubectl logs`) it refreshes every 10 s, not 10 times a second. These
# are tqdm's own settings (TQDM_<argument> sets an argument's default), read once when tqdm is first imported: here,
# before any module of the project imports it; the step processes `mlflow run` starts inherit them. A value the
# user set wins (TQDM_DELAY=0 shows every bar).
os.environ.setdefault("TQDM_DELAY", "2")
if not getattr(sys.stderr, "isatty", lambda: False)():
    os.environ.setdefault("TQDM_MININTERVAL", "10")
