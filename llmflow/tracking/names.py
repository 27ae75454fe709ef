"""Every name the project writes into MLflow: tags, aliases, artifact paths, environment variables.

These names are the contract between the steps (and with the people and dashboards that read them), so
they live here and nowhere else; ``tests/test_layout.py`` fails if an ``llmflow.`` tag literal appears in
another module of the library.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmflow.tracking.unity_catalog import uc_key

# Registry aliases: `challenger` is registered and not yet judged; `champion` is what serving uses;
# `previous` is the champion that the current one replaced (what rollback restores).
CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"

# Written by every step on its own run.
TAG_STEP = "llmflow.step"
TAG_ERROR = "llmflow.error"
TAG_GIT_COMMIT = "llmflow.git_commit"
TAG_GIT_CLEAN = "llmflow.git_tree_clean"  # "true", "false" or "unknown"
TAG_CODE_DIGEST = "llmflow.code_digest"
TAG_SEED = "llmflow.seed"
TAG_UPSTREAM = "llmflow.upstream_runs"

# Lineage: where a model came from (run tags, copied onto registered versions).
TAG_SOURCE = "llmflow.source"  # "hub" or "local"
TAG_HF_REPO = "llmflow.hf_repo_id"
TAG_HF_SHA = "llmflow.hf_commit_sha"
TAG_MODEL_URI = "llmflow.model_uri"
TAG_PRECISION = "llmflow.precision"
TAG_EXECUTION_PROVIDER = "llmflow.execution_provider"
TAG_DOWNLOAD_RUN = "llmflow.download_run_id"
TAG_EXPORT_RUN = "llmflow.export_run_id"
TAG_SMOKE_TEST = "llmflow.smoke_test"  # "passed" or "skipped: <why>"
TAG_TRANSFORMERS_WEIGHTS = "llmflow.transformers_weights"  # "stored", or "hub reference" (save_pretrained=false)
TAG_ONNX_SOURCE = "llmflow.onnx_source"  # "export", hf://<repo>@<commit sha>[/<subfolder>], or a local folder
TAG_ONNX_STORAGE = "llmflow.onnx_storage"  # copy (the logged model holds the ONNX) or reference (runs:/<export>/onnx)
TAG_ONNX_SOURCE_SHA = "llmflow.onnx_source_sha"  # a prebuilt source's hub commit, or sha256:<folder digest>
TAG_INT4_BLOCK_SIZE = "llmflow.int4_block_size"  # read from the model for a prebuilt source
TAG_INT4_ACCURACY_LEVEL = "llmflow.int4_accuracy_level"
TAG_INT4_RECIPE = "llmflow.int4_recipe"  # Int4Recipe.label of an export (llmflow.export.recipe); none for a prebuilt

# register
TAG_SOURCE_RUN = "llmflow.source_run_id"
TAG_LOGGED_BY_STEP = "llmflow.logged_by_step"
TAG_REGISTERED_NAME = "llmflow.registered_model_name"
TAG_REGISTERED_VERSION = "llmflow.registered_model_version"
TAG_VERSION_CREATED = "llmflow.version_created"

# evaluate
TAG_EVALUATE_RUN = "llmflow.evaluate_run_id"
TAG_DECISION = "llmflow.decision"
TAG_DECISION_REASON = "llmflow.decision_reason"
TAG_VALIDATION_STATUS = "validation_status"  # MLflow's conventional version tag, not ours: no prefix
TAG_PREVIOUS_CHAMPION = "llmflow.previous_champion"
# On the registered model, one per evaluation waiting for or holding the decision lock (+ ".<evaluate run id>"):
# "choosing <lease end>" or "<ticket> <lease end>" (epoch s); see llmflow.evaluation.promotion.
TAG_DECISION_LOCK = "llmflow.decision_lock"
TAG_QA_SHA = "llmflow.qa_sha256"
TAG_QA_ROWS = "llmflow.qa_rows"  # questions of the QA file an evaluation dataset holds
TAG_HELDOUT_SHA = "llmflow.heldout_sha256"
TAG_EVAL_MAX_NEW_TOKENS = "llmflow.eval_max_new_tokens"
TAG_EVAL_MAX_QUESTIONS = "llmflow.eval_max_questions"
TAG_EVAL_MAX_HELDOUT_TOKENS = "llmflow.eval_max_heldout_tokens"
TAG_CHAMPION_VERSION = "llmflow.champion_version"
TAG_REFERENCE_MODEL_URI = "llmflow.reference_model_uri"
TAG_CRITERION_PREFIX = "llmflow.criterion."  # + two-digit criterion number

# main
TAG_STEP_RUN_PREFIX = "llmflow.run."  # + step key, e.g. llmflow.run.evaluate:onnx
TAG_REUSED_STEPS = "llmflow.reused_steps"

# rollback
TAG_ROLLED_BACK = "llmflow.rolled_back_by_run"
TAG_RESTORED_VERSION = "llmflow.restored_version"
TAG_REPLACED_VERSION = "llmflow.replaced_version"

# reproduce
TAG_SCRATCH_EXPERIMENT = "llmflow.scratch_experiment_id"
TAG_REPRODUCE_RESULT = "llmflow.reproduce_result"
TAG_REBUILT_PREFIX = "llmflow.rebuilt."  # + step key


# Registry tags. A registered version carries some of the run tags above (its lineage, its evaluation, its
# rollback) in the form every registry takes, Unity Catalog included, whose tag keys may not hold `.`:
# `llmflow.evaluate_run_id` on a run is `llmflow_evaluate_run_id` on a version. Run tags keep the `.` form.
def registry_key(tag: str) -> str:
    """The key that run tag ``tag`` has on a registered model or version (``llmflow.x`` -> ``llmflow_x``)."""
    return uc_key(tag)


def registry_tag(tags: Mapping[str, str], tag: str) -> str | None:
    """Run tag ``tag`` as recorded on a registry object's ``tags``, under its registry key."""
    return tags.get(registry_key(tag))


# Environment variables. main hands a step the ids of its upstream runs in ENV_UPSTREAM; the step records
# them as TAG_UPSTREAM.
ENV_UPSTREAM = "LLMFLOW_UPSTREAM_RUNS"

# Artifact paths inside a run.
FREEZE_ARTIFACT = "environment/pip-freeze.txt"
MANIFEST_ARTIFACT = "manifest.json"  # download
MODEL_ARTIFACT_DIR = "model"  # download, local source: the model's files
ONNX_ARTIFACT_DIR = "onnx"  # export_onnx
ONNX_MANIFEST_ARTIFACT = "onnx_manifest.json"
SMOKE_TEST_ARTIFACT = "smoke_test.txt"
TABLE_FILE = "eval_table.json"  # evaluate
REPORT_DIR = "report"
REPORT_FILE = "report.md"
DECISION_FILE = "decision.json"
# The name of every logged model inside its run.

# Datasets (evaluate): the QA set is one MLflow GenAI evaluation dataset, tagged with the file it came from
# and its sha256 (TAG_QA_SHA).
TAG_QA_SOURCE = "llmflow.qa_source"
# MLflow's own experiment tag that picks the UI's tabs (not ours: no prefix).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# promote: on the copy, where it was promoted from (registry without credentials, name and version).
TAG_PROMOTED_FROM = "llmflow.promoted_from"
TAG_PROMOTE_TARGET = "llmflow.promote_target"

# batch_predict
TAG_BATCH_MODEL_URI = "llmflow.batch_model_uri"
PREDICTIONS_ARTIFACT_DIR = "predictions"
