"""Step ``export_onnx``: export the downloaded model to ONNX with the onnxruntime-genai model builder.

Reads the model folder of a finished ``download`` run (``download_run_id``). With ``onnx_source`` set to a Hub ONNX
folder or a local one (``llmflow.export.prebuilt``), that prebuilt model is taken instead of running the builder:
it is checked, described and smoke-tested the same way, and the download run stays its transformers reference.
Writes, in its MLflow run:
- ``onnx/``: the builder's output (genai_config.json, model.onnx, model.onnx.data, tokenizer files,
  chat_template.jinja), or the prebuilt folder's files, ready for ``og.Model``;
- ``onnx_manifest.json``: every file of ``onnx/`` with its size and sha256;
- ``smoke_test.txt``: a chat question, its templated prompt and its greedy answer from onnxruntime-genai;
- tags for the precision, the execution provider and the int4 settings (for a prebuilt model, read from its
  folder), the download run, the HF repo id and commit sha, the ONNX source and what pins a prebuilt one
  (``llmflow.onnx_source``, ``llmflow.onnx_source_sha``: the hub commit, or the local folder's content digest), and
  ``llmflow.smoke_test`` (``passed``, or ``skipped: <why>`` when this machine cannot run the execution provider);
- metrics ``export_seconds`` (the builder, or fetching a prebuilt folder), ``onnx_size_bytes`` and ``smoke_tokens``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from tqdm.auto import tqdm

from llmflow.errors import InputError, first_line
from llmflow.export import prebuilt, recipe
from llmflow.export.builder import build
from llmflow.export.memory import preflight_memory
from llmflow.export.smoke import SMOKE_QUESTION, SmokeResult, smoke_test, smoke_test_skip_reason
from llmflow.options import StepOptions, a_bool, non_empty, one_of, option
from llmflow.sources.folder import model_dir_from_run
from llmflow.sources.manifest import build_manifest, manifest_digest
from llmflow.tracking.names import (
    ONNX_ARTIFACT_DIR,
    ONNX_MANIFEST_ARTIFACT,
    SMOKE_TEST_ARTIFACT,
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_INT4_ACCURACY_LEVEL,
    TAG_INT4_BLOCK_SIZE,
    TAG_INT4_RECIPE,
    TAG_PRECISION,
    TAG_SMOKE_TEST,
)
from llmflow.tracking.runs import get_step_run, step_run

logger = logging.getLogger(__name__)

PRECISIONS = ("int4", "int8", "fp16", "fp32")
EXECUTION_PROVIDERS = ("cpu", "cuda")
# The builder's own list of valid combinations, restricted to the two providers this project supports.
SUPPORTED_PAIRS = (
    ("fp32", "cpu"),
    ("fp32", "cuda"),
    ("fp16", "cuda"),
    ("int8", "cpu"),
    ("int8", "cuda"),
    ("int4", "cpu"),
    ("int4", "cuda"),
)
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_MIXED_PRECISION = recipe.mixed_precision_text(recipe.DEFAULT_INT4_RECIPE.int8)

STAGES = ("validate", "fetch model", "build", "smoke test", "log")
PREBUILT_STAGES = ("validate", "fetch ONNX", "check", "smoke test", "log")


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    download_run_id: str
    precision: str
    execution_provider: str
    onnx_size_bytes: int
    smoke_test: str


@dataclass(frozen=True, kw_only=True)
class ExportSettings(StepOptions):
    """How the onnxruntime-genai model builder exports: precision, execution provider, int4 quantization."""

    precision: str = option("int4", help="Weight precision: int4, int8, fp16 or fp32.", check=one_of(*PRECISIONS))
    execution_provider: str = option(
        "cpu", help="Where the model will run: cpu or cuda (fp16 needs cuda).", check=one_of(*EXECUTION_PROVIDERS)
    )
    # Checked for every precision, so a bad value fails even where it would be ignored.
    int4_block_size: int = option(
        recipe.DEFAULT_INT4_RECIPE.block_size,
        help="Block size for int4 quantization: 16, 32, 64, 128 or 256.",
        check=one_of(*INT4_BLOCK_SIZES),
    )
    int4_accuracy_level: int = option(
        recipe.DEFAULT_INT4_RECIPE.accuracy_level,
        help="int4 MatMul accuracy level: 0 to 4 (4, the default: int8 compute).",
        check=one_of(*INT4_ACCURACY_LEVELS),
    )
    int4_algo: str = option(
        recipe.DEFAULT_INT4_RECIPE.algo,
        help="int4 quantization method: gptq (the default: GPTQ on a calibration text, one layer at a time, onto the "
        "default method's grid), default (MLAS round-to-nearest), rtn or k_quant.",
        check=one_of(*recipe.ALGORITHMS),
    )
    int4_mixed_precision: str = option(
        DEFAULT_MIXED_PRECISION,
        help="MatMuls kept at int8 in an int4 model: none, or a comma-separated list of last_matmul (the LM head), "
        "mixed_layers (llama.cpp's sensitive layers) and qkv (every layer's attention input projection).",
        check=recipe.check_mixed_precision,
    )
    int4_symmetric: bool = option(
        recipe.DEFAULT_INT4_RECIPE.symmetric,
        help="int4 weights symmetric (true: int4 and a scale) or not (false: uint4 and a zero point).",
        check=a_bool,
    )
    int4_clip: str = option(
        recipe.DEFAULT_INT4_RECIPE.clip,
        help="Clip each int4 block's range by calibration (activation: AWQ's clipping search on a calibration text, "
        "with int4_algo=default) or not (none).",
        check=one_of(*recipe.CLIPS),
    )
    onnx_source: str = option(
        prebuilt.EXPORT,
        help="'export' (run the builder), a Hub ONNX folder hf://<org>/<repo>[@<revision>][/<subfolder>], or a "
        "local onnxruntime-genai model folder; a prebuilt model's own precision and provider are recorded.",
        check=prebuilt.check_onnx_source,
    )

    def int4_recipe(self) -> recipe.Int4Recipe:
        """The int4 quantization recipe these settings describe (``llmflow.export.recipe``)."""
        return recipe.recipe_from(
            self.int4_algo,
            self.int4_mixed_precision,
            self.int4_symmetric,
            self.int4_block_size,
            self.int4_accuracy_level,
            self.int4_clip,
        )

    def check_together(self) -> None:
        if self.int4_clip != "none" and self.int4_algo != "default":
            raise InputError(
                f"int4_clip '{self.int4_clip}' works with int4_algo 'default' only, not '{self.int4_algo}': the "
                "clipped weights go to the default round-to-nearest quantizer; pass int4_clip=none or int4_algo=default"
            )
        if (self.precision, self.execution_provider) not in SUPPORTED_PAIRS:
            accepted = ", ".join(f"{p}/{e}" for p, e in SUPPORTED_PAIRS)
            raise InputError(
                f"precision '{self.precision}' with execution_provider '{self.execution_provider}' is not supported "
                f"by the onnxruntime-genai model builder; accepted precision/execution_provider pairs: {accepted}"
            )


@dataclass(frozen=True, kw_only=True)
class ExportOptions(ExportSettings):
    """Export a downloaded model to ONNX with the onnxruntime-genai model builder."""

    download_run_id: str = option(help="Id of a finished `download` run whose model to export.", check=non_empty)


def run_builder(model_dir: Path, out_dir: Path, settings: ExportSettings | None = None) -> Path:
    """Check ``settings`` (default: the defaults), then export the HF model folder ``model_dir`` into ``out_dir``.

    The same input gives the same files at any commit of this project; a model or option the builder rejects becomes
    an ``InputError`` (``llmflow.export.builder``).
    """
    settings = ExportSettings() if settings is None else settings
    settings.check()
    return build(
        model_dir,
        out_dir,
        precision=settings.precision,
        execution_provider=settings.execution_provider,
        recipe=settings.int4_recipe(),
    )


@contextmanager
def _stage(bar: tqdm, name: str) -> Iterator[None]:
    bar.set_postfix_str(name)
    yield
    bar.update()


def export_onnx(options: ExportOptions) -> ExportResult:
    """Export the model of download run ``options.download_run_id`` to ONNX and record it in this step's run.

    With a prebuilt ``options.onnx_source``, that model is fetched and checked instead of being built.
    """
    download_run_id, precision, execution_provider = (
        options.download_run_id,
        options.precision,
        options.execution_provider,
    )
    int4_block_size, int4_accuracy_level = options.int4_block_size, options.int4_accuracy_level
    int4_recipe = options.int4_recipe()
    source = prebuilt.parse_onnx_source(options.onnx_source)
    stages = STAGES if source.kind == prebuilt.EXPORT else PREBUILT_STAGES
    with (
        step_run("export_onnx", options) as run,
        tempfile.TemporaryDirectory(prefix="llmflow-export-") as tmp,
        tqdm(total=len(stages), desc="export_onnx", unit="stage") as bar,
    ):
        with _stage(bar, stages[0]):
            download_run = get_step_run(download_run_id, "download")
        if source.kind == prebuilt.EXPORT:
            with _stage(bar, stages[1]):
                preflight_memory(download_run_id, precision, calibrated=precision == "int4" and int4_recipe.calibrated)
                model_dir = model_dir_from_run(download_run_id, dst=Path(tmp) / "hf")
            with _stage(bar, stages[2]):
                started = time.perf_counter()
                out = run_builder(model_dir, Path(tmp) / "onnx", options)
                export_seconds = time.perf_counter() - started
            pin = ""
            int4 = (int4_block_size, int4_accuracy_level) if precision == "int4" else (None, None)
        else:
            with _stage(bar, stages[1]):
                started = time.perf_counter()
                out, pin, found = prebuilt.fetch_checked(source, options.onnx_source)
                export_seconds = time.perf_counter() - started
            with _stage(bar, stages[2]):
                given = (precision, execution_provider)
                precision, execution_provider = found.precision, found.execution_provider
                int4 = (found.int4_block_size, found.int4_accuracy_level)
                if given != (precision, execution_provider):
                    logger.warning(
                        "export_onnx: onnx_source is %s/%s, not %s/%s as the export options say; its own is recorded",
                        precision,
                        execution_provider,
                        *given,
                    )
        with _stage(bar, "smoke test"):
            skip_reason = smoke_test_skip_reason(execution_provider)
            smoke = None if skip_reason else _smoke(out, options.onnx_source)
        with _stage(bar, "log"):
            manifest = build_manifest(out)
            if source.kind == "local":
                pin = "sha256:" + manifest_digest(manifest)  # as prebuilt.resolve, from this one read of the folder
            size = sum(f["size"] for f in manifest)
            smoke_status = f"skipped: {skip_reason}" if skip_reason else "passed"
            int4_tags = {TAG_INT4_BLOCK_SIZE: str(int4[0]), TAG_INT4_ACCURACY_LEVEL: str(int4[1])} if int4[0] else {}
            if int4[0] and source.kind == prebuilt.EXPORT:
                int4_tags[TAG_INT4_RECIPE] = int4_recipe.label
            mlflow.set_tags(
                {
                    TAG_PRECISION: precision,
                    TAG_EXECUTION_PROVIDER: execution_provider,
                    TAG_DOWNLOAD_RUN: download_run_id,
                    TAG_HF_REPO: download_run.data.tags.get(TAG_HF_REPO, ""),
                    TAG_HF_SHA: download_run.data.tags.get(TAG_HF_SHA, ""),
                    TAG_SMOKE_TEST: smoke_status,
                    **prebuilt.source_tags(source, pin),
                    **int4_tags,
                }
            )
            mlflow.log_artifacts(str(out), ONNX_ARTIFACT_DIR)
            mlflow.log_dict(
                {"precision": precision, "execution_provider": execution_provider, "files": manifest},
                ONNX_MANIFEST_ARTIFACT,
            )
            mlflow.log_metrics({"export_seconds": export_seconds, "onnx_size_bytes": size})
            if smoke is not None:
                transcript = f"question: {SMOKE_QUESTION}\nprompt:\n{smoke.prompt}\nanswer:\n{smoke.answer}\n"
                mlflow.log_text(transcript, SMOKE_TEST_ARTIFACT)
                mlflow.log_metric("smoke_tokens", smoke.tokens)
        if skip_reason:
            logger.warning("export_onnx: smoke test skipped: %s", skip_reason)
        else:
            logger.info("export_onnx: smoke test %r -> %r (%d tokens)", SMOKE_QUESTION, smoke.answer, smoke.tokens)
        logger.info(
            "export_onnx: %s/%s from %s, %d files, %d bytes in %.1f s",
            precision,
            execution_provider,
            prebuilt.label(source),
            len(manifest),
            size,
            export_seconds,
        )
        return ExportResult(run.info.run_id, download_run_id, precision, execution_provider, size, smoke_status)


def _smoke(onnx_dir: Path, onnx_source: str) -> SmokeResult:
    """The smoke test; a prebuilt folder that onnxruntime-genai cannot load or run is a bad ``onnx_source``."""
    try:
        return smoke_test(onnx_dir)
    except RuntimeError as exc:  # onnxruntime-genai raises RuntimeError for a model it cannot load or run
        if onnx_source == prebuilt.EXPORT:
            raise
        reason = first_line(exc)
        raise InputError(f"onnx_source '{onnx_source}' is not a loadable onnxruntime-genai model: {reason}") from exc
