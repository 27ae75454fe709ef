"""What a person reads about an ONNX model in MLflow: its LoggedModel's name and the params that tell it apart.

The transformers model's and the registry's descriptions are in ``llmflow.tracking.model_cards``; these two read
the int4 recipe, which is the export's knowledge.
"""

from __future__ import annotations

from mlflow.entities import Run

from llmflow.export.recipe import DEFAULT_INT4_RECIPE, INT4_RECIPE_PARAMS
from llmflow.tracking import names
from llmflow.tracking.model_cards import NOT_IN_NAME, repo_name, whole


def onnx_model_name(export_run: Run) -> str:
    """``<repo>-<precision>-<execution provider>``, e.g. ``Phi-3-mini-4k-instruct-int4-cpu``.

    An int4 export with another recipe than the default names it: ``...-int4-k_quant-sym-b32-a4-cpu``.
    """
    tags = export_run.data.tags
    recipe = tags.get(names.TAG_INT4_RECIPE, "")
    precision = tags.get(names.TAG_PRECISION, "onnx")
    if recipe and recipe != DEFAULT_INT4_RECIPE.label:
        precision = f"{precision}-{NOT_IN_NAME.sub('-', recipe)}"
    return f"{repo_name(tags)}-{precision}-{tags.get(names.TAG_EXECUTION_PROVIDER, 'cpu')}"


def onnx_model_params(export_run: Run, max_new_tokens: int) -> dict[str, str]:
    """The figures that tell ONNX models apart: source, precision, provider, quantisation, answer length."""
    tags, params = export_run.data.tags, export_run.data.params
    figures = {
        "flavour": "onnx",
        "hf_repo_id": tags.get(names.TAG_HF_REPO, ""),
        "hf_commit_sha": tags.get(names.TAG_HF_SHA, ""),
        "precision": tags.get(names.TAG_PRECISION, ""),
        "execution_provider": tags.get(names.TAG_EXECUTION_PROVIDER, ""),
        "max_new_tokens": str(max_new_tokens),
        "download_run_id": tags.get(names.TAG_DOWNLOAD_RUN, ""),
        "export_run_id": export_run.info.run_id,
        "onnx_source": tags.get(names.TAG_ONNX_SOURCE, "export"),
    }
    if figures["precision"] == "int4":
        # Read from the model for a prebuilt source (tags); an export's are its parameters.
        figures["int4_block_size"] = tags.get(names.TAG_INT4_BLOCK_SIZE) or whole(params.get("int4_block_size", ""))
        figures["int4_accuracy_level"] = tags.get(names.TAG_INT4_ACCURACY_LEVEL) or whole(
            params.get("int4_accuracy_level", "")
        )
        if tags.get(names.TAG_INT4_RECIPE):
            figures["int4_recipe"] = tags[names.TAG_INT4_RECIPE]
            figures.update({name: params[name] for name in INT4_RECIPE_PARAMS if name in params})
    return figures
