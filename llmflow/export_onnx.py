"""Step ``export_onnx``: export the downloaded model to ONNX with the onnxruntime-genai model builder.

Reads the model folder of a finished ``download`` run (``download_run_id``).
Writes, in its MLflow run:
- ``onnx/``: the builder's output (genai_config.json, model.onnx, model.onnx.data, tokenizer files,
  chat_template.jinja), ready for ``og.Model``;
- ``onnx_manifest.json``: every file of ``onnx/`` with its size and sha256;
- ``smoke_test.txt``: a chat question, its templated prompt and the model's greedy answer, generated
  with onnxruntime-genai before the run finishes;
- tags for the precision, the execution provider, the download run, the HF repo id and commit sha, and
  ``llmflow.smoke_test`` (``passed``, or ``skipped: <why>`` when this machine cannot run the export's
  execution provider);
- metrics ``export_seconds``, ``onnx_size_bytes`` and ``smoke_tokens``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from tqdm.auto import tqdm

from llmflow.download import WEIGHT_SUFFIXES, build_manifest, model_dir_from_run, read_manifest
from llmflow.errors import InputError
from llmflow.export.memory import check_export_memory, config_of, export_need, memory_found
from llmflow.export.nbits import streaming_quantization
from llmflow.export.stamp import package_build_stamp
from llmflow.options import StepOptions, non_empty, one_of, option
from llmflow.tracking.names import (
    ONNX_ARTIFACT_DIR,
    ONNX_MANIFEST_ARTIFACT,
    SMOKE_TEST_ARTIFACT,
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
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

# What the builder raises for a model or option it cannot handle; anything else is a bug and keeps its traceback.
BUILDER_INPUT_ERRORS = (NotImplementedError, ValueError, OSError)
SMOKE_QUESTION = "What is the capital of Spain?"
SMOKE_MAX_NEW_TOKENS = 16
STAGES = ("validate", "fetch model", "build", "smoke test", "log")


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    download_run_id: str
    precision: str
    execution_provider: str
    onnx_size_bytes: int
    smoke_test: str


@dataclass(frozen=True)
class SmokeResult:
    prompt: str
    answer: str
    tokens: int


@dataclass(frozen=True, kw_only=True)
class ExportSettings(StepOptions):
    """How the onnxruntime-genai model builder exports: precision, execution provider, int4 quantization."""

    precision: str = option("int4", help="Weight precision: int4, int8, fp16 or fp32.", check=one_of(*PRECISIONS))
    execution_provider: str = option(
        "cpu", help="Where the model will run: cpu or cuda (fp16 needs cuda).", check=one_of(*EXECUTION_PROVIDERS)
    )
    # Checked for every precision, so a bad value fails even where it would be ignored.
    int4_block_size: int = option(
        32, help="Block size for int4 quantization: 16, 32, 64, 128 or 256.", check=one_of(*INT4_BLOCK_SIZES)
    )
    int4_accuracy_level: int = option(
        4,
        help="int4 MatMul accuracy level: 0 to 4 (4, the default: int8 compute).",
        check=one_of(*INT4_ACCURACY_LEVELS),
    )

    def check_together(self) -> None:
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


def validate_export_options(
    precision: str, execution_provider: str, int4_block_size: int, int4_accuracy_level: int
) -> None:
    """Raise ``InputError`` unless the options are ones the onnxruntime-genai builder accepts."""
    ExportSettings(
        precision=precision,
        execution_provider=execution_provider,
        int4_block_size=int4_block_size,
        int4_accuracy_level=int4_accuracy_level,
    ).check()


def builder_extra_options(precision: str, int4_block_size: int, int4_accuracy_level: int) -> list[str]:
    """The builder's ``KEY=VALUE`` extra options; only int4 takes any."""
    per_precision = {"int4": [f"int4_block_size={int4_block_size}", f"int4_accuracy_level={int4_accuracy_level}"]}
    return per_precision.get(precision, [])


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hold back the quantizer's per-MatMul INFO lines; its warnings still show."""
    quantizer = logging.getLogger("onnxruntime.quantization")
    previous = quantizer.level
    quantizer.setLevel(max(logging.WARNING, previous))
    try:
        yield
    finally:
        quantizer.setLevel(previous)


def run_builder(
    model_dir: Path,
    out_dir: Path,
    precision: str,
    execution_provider: str,
    int4_block_size: int,
    int4_accuracy_level: int,
) -> Path:
    """Export the HF model folder ``model_dir`` into ``out_dir`` with the onnxruntime-genai builder; return ``out_dir``.

    This is the one place that calls the builder. A model or option it rejects becomes an ``InputError``.
    Quantization runs one MatMul at a time (``llmflow.export.nbits``): the same files as the builder's own pass,
    without its whole-graph fp32 copy. The build stamp in ``model.onnx`` is the installed wheel's commit
    (``llmflow.export.stamp``), so the same input gives the same files at any commit of this project.
    """
    validate_export_options(precision, execution_provider, int4_block_size, int4_accuracy_level)
    # Imported here: the builder pulls in torch and transformers, which validation alone does not need.
    from onnxruntime_genai.models import builder

    extra = builder_extra_options(precision, int4_block_size, int4_accuracy_level)
    out_dir = Path(out_dir)
    with (
        tempfile.TemporaryDirectory(prefix="llmflow-builder-cache-") as cache_dir,
        _quiet_quantizer(),
        streaming_quantization(),
        package_build_stamp(),
    ):
        try:
            # (model_name, input_path, output_dir, precision, execution_provider, cache_dir), as the builder's CLI
            # passes them; no model_name, so the builder reads the local folder and never asks the Hub.
            args = (None, str(model_dir), str(out_dir), precision, execution_provider, cache_dir)
            builder.create_model(*args, **builder.parse_extra_options(*args, extra))
        except BUILDER_INPUT_ERRORS as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(
                f"the onnxruntime-genai model builder cannot export '{model_dir}' as "
                f"{precision}/{execution_provider}: {reason}"
            ) from exc
    return out_dir


def smoke_test(
    onnx_dir: Path, question: str = SMOKE_QUESTION, max_new_tokens: int = SMOKE_MAX_NEW_TOKENS
) -> SmokeResult:
    """Ask the exported model one chat question with greedy decoding, through the serving generation loop."""
    import onnxruntime_genai as og

    from llmflow.serving.generation import greedy

    model = og.Model(str(onnx_dir))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": question}]), add_generation_prompt=True
    )
    tokens, _ = greedy(model, tokenizer.encode(prompt), max_new_tokens)
    return SmokeResult(prompt, tokenizer.decode(tokens), len(tokens))


def smoke_test_skip_reason(execution_provider: str) -> str | None:
    """Why this machine cannot run a model exported for ``execution_provider``, or ``None`` when it can."""
    import onnxruntime_genai as og

    available = {"cpu": lambda: True, "cuda": og.is_cuda_available}
    if available[execution_provider]():
        return None
    return (
        f"the installed onnxruntime-genai {og.__version__} has no {execution_provider.upper()} provider on this "
        "machine; run the exported model where it has one"
    )


def preflight_memory(download_run_id: str, precision: str) -> None:
    """Fail at once, in one line, when this machine has too little memory to export the download run's model.

    Reads only the run's manifest and config.json, so it runs before any weight is fetched.
    """
    weight_bytes = sum(
        f["size"] for f in read_manifest(download_run_id)["files"] if f["file"].endswith(WEIGHT_SUFFIXES)
    )
    config = config_of(model_dir_from_run(download_run_id, weights=False))
    need, found = export_need(config, weight_bytes, precision), memory_found()
    logger.info("export_onnx: needs about %.1f GiB, %.1f GiB available", need.needed / 2**30, found.available / 2**30)
    check_export_memory(need, found, precision)


@contextmanager
def _stage(bar: tqdm, name: str) -> Iterator[None]:
    bar.set_postfix_str(name)
    yield
    bar.update()


def export_onnx(options: ExportOptions) -> ExportResult:
    """Export the model of download run ``options.download_run_id`` to ONNX and record it in this step's run."""
    download_run_id, precision, execution_provider = (
        options.download_run_id,
        options.precision,
        options.execution_provider,
    )
    int4_block_size, int4_accuracy_level = options.int4_block_size, options.int4_accuracy_level
    with (
        step_run("export_onnx", options) as run,
        tempfile.TemporaryDirectory(prefix="llmflow-export-") as tmp,
        tqdm(total=len(STAGES), desc="export_onnx", unit="stage") as bar,
    ):
        with _stage(bar, "validate"):
            download_run = get_step_run(download_run_id, "download")
        with _stage(bar, "fetch model"):
            preflight_memory(download_run_id, precision)
            model_dir = model_dir_from_run(download_run_id, dst=Path(tmp) / "hf")
        with _stage(bar, "build"):
            started = time.perf_counter()
            out = run_builder(
                model_dir, Path(tmp) / "onnx", precision, execution_provider, int4_block_size, int4_accuracy_level
            )
            export_seconds = time.perf_counter() - started
        with _stage(bar, "smoke test"):
            skip_reason = smoke_test_skip_reason(execution_provider)
            smoke = None if skip_reason else smoke_test(out)
        with _stage(bar, "log"):
            manifest = build_manifest(out)
            size = sum(f["size"] for f in manifest)
            smoke_status = f"skipped: {skip_reason}" if skip_reason else "passed"
            mlflow.set_tags(
                {
                    TAG_PRECISION: precision,
                    TAG_EXECUTION_PROVIDER: execution_provider,
                    TAG_DOWNLOAD_RUN: download_run_id,
                    TAG_HF_REPO: download_run.data.tags.get(TAG_HF_REPO, ""),
                    TAG_HF_SHA: download_run.data.tags.get(TAG_HF_SHA, ""),
                    TAG_SMOKE_TEST: smoke_status,
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
            "export_onnx: %s/%s, %d files, %d bytes in %.1f s",
            precision,
            execution_provider,
            len(manifest),
            size,
            export_seconds,
        )
        return ExportResult(run.info.run_id, download_run_id, precision, execution_provider, size, smoke_status)
