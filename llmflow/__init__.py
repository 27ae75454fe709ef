"""llmflow: take a Hugging Face chat model to production with MLflow.

The step modules (``download``, ``export_onnx``, ``log_transformers``, ``log_pyfunc``, ``register``,
``evaluate``, ``main``, ``rollback``, ``reproduce``) sit at the top, one per MLproject entry point; the
support code lives in subpackages (see the README's "Where things live").
"""

from pathlib import Path

# The project's root: MLproject, steps/ and data/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
