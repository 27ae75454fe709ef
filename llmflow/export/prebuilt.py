"""A prebuilt onnxruntime-genai model in place of the export: a Hub ONNX repo's folder pinned to a commit, or a folder.

``onnx_source`` is one of:
- ``export`` (the default): the step runs the model builder;
- ``hf://<org>/<repo>[@<revision>][/<subfolder>]``: a folder of a Hub repo, the form ``huggingface_hub``'s
  ``HfFileSystem`` uses, for example the Phi-3 cookbook's
  ``hf://microsoft/Phi-3-mini-4k-instruct-onnx/cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4``. The revision
  (``main`` when left out) is resolved to a commit sha, which is what the step records and fetches; with
  ``HF_HUB_OFFLINE`` set the local Hugging Face cache answers, as for ``download``;
- any other value: a local folder holding an onnxruntime-genai model.

The form is parsed here rather than by ``HfFileSystem.resolve_path``, which asks the Hub whether the repo exists and
so cannot run offline.

Whatever the source, the folder must be one ``og.Model`` can load: ``genai_config.json``, the decoder's ONNX file it
names, and a tokenizer. ``describe`` reads precision, int4 block size and accuracy level, and the execution provider
from the folder itself (its graph and its GenAI config), so the run records what the model is, not what the step's
export options say.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from llmflow.errors import InputError, first_line
from llmflow.tracking.names import TAG_ONNX_SOURCE, TAG_ONNX_SOURCE_SHA

logger = logging.getLogger(__name__)

EXPORT = "export"
HUB_SCHEME = "hf://"
HUB_PATTERN = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[^/]+))?(?:/(?P<subfolder>.+))?$")
ACCEPTED = (
    "'export', a Hub ONNX folder as hf://<org>/<repo>[@<revision>][/<subfolder>], "
    "or a local onnxruntime-genai model folder"
)
# One of these is the tokenizer onnxruntime-genai reads (tokenizer.json with tokenizer_config.json, or SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# ONNX element types of float initializers, as onnx_ir names them, and the precision each means.
FLOAT_PRECISIONS = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16"}


@dataclass(frozen=True)
class OnnxSource:
    """A parsed ``onnx_source``: ``kind`` is ``export``, ``hub`` or ``local``."""

    kind: str
    repo_id: str = ""
    revision: str = ""
    subfolder: str = ""
    path: Path | None = None

    def pinned(self, commit_sha: str) -> str:
        """The same hub source at ``commit_sha``: what reproduce re-fetches."""
        return f"{HUB_SCHEME}{self.repo_id}@{commit_sha}" + (f"/{self.subfolder}" if self.subfolder else "")


def parse_onnx_source(value: str) -> OnnxSource:
    """Parse ``value``; raise ``InputError`` naming it and the accepted forms when it is none of them."""
    if value == EXPORT:
        return OnnxSource(EXPORT)
    if value.startswith(HUB_SCHEME):
        match = HUB_PATTERN.match(value)
        subfolder = (match.group("subfolder") or "").strip("/") if match else ""
        if not match or any(part in ("", ".", "..") for part in subfolder.split("/") if subfolder):
            raise InputError(f"onnx_source '{value}' is not a Hub ONNX folder; expected {ACCEPTED}")
        revision = unquote(match.group("revision") or "main")
        return OnnxSource("hub", repo_id=match.group("repo"), revision=revision, subfolder=subfolder)
    if "://" in value:
        raise InputError(f"onnx_source '{value}' is not accepted; expected {ACCEPTED}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise InputError(f"onnx_source '{value}' is not accepted: no such folder; expected {ACCEPTED}")
    return OnnxSource("local", path=path.resolve())


def check_onnx_source(name: str, value: str) -> None:
    """Option check: ``value`` parses (a local folder must exist)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} {value!r} is not accepted; expected {ACCEPTED}")
    parse_onnx_source(value)


def resolve(source: OnnxSource, token: str | None) -> str:
    """What identifies the source's content now: the hub commit sha, or ``sha256:<digest>`` of a local folder."""
    from llmflow.sources.hub import resolve_hub
    from llmflow.sources.manifest import build_manifest, manifest_digest

    if source.kind == "hub":
        return resolve_hub(source.repo_id, source.revision, token)[0]
    return "sha256:" + manifest_digest(build_manifest(source.path))


def fetch(source: OnnxSource, commit_sha: str, token: str | None) -> Path:
    """The source's folder on this machine: a local folder in place; a hub folder from the HF cache or the Hub."""
    if source.kind == "local":
        return source.path
    from huggingface_hub import snapshot_download

    patterns = [f"{source.subfolder}/*"] if source.subfolder else None
    snapshot = Path(snapshot_download(source.repo_id, revision=commit_sha, allow_patterns=patterns, token=token))
    return snapshot / source.subfolder if source.subfolder else snapshot


def check_folder(folder: Path, what: str) -> dict:
    """Raise ``InputError`` unless ``folder`` holds an onnxruntime-genai model; return its GenAI config."""
    config_file = folder / "genai_config.json"
    if not config_file.is_file():
        raise InputError(f"{what} has no genai_config.json; expected an onnxruntime-genai model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        decoder = config["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"{what}: genai_config.json has no model.decoder.filename; expected an onnxruntime-genai GenAI config"
        ) from None
    if not (folder / decoder).is_file():
        raise InputError(f"{what} has no '{decoder}', the decoder its genai_config.json names")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{what} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); onnxruntime-genai needs one")
    return config


@dataclass(frozen=True)
class Description:
    precision: str
    execution_provider: str
    int4_block_size: int | None = None
    int4_accuracy_level: int | None = None


def describe(folder: Path, config: dict, what: str = "the ONNX folder") -> Description:
    """Precision (int4/int8 from ``MatMulNBits``, else the float initializers' type) and provider of a model folder.

    Reads the graph only: the weights in external data stay on disk.
    """
    import onnx_ir as ir

    provider_options = config["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    providers = [name for entry in provider_options for name in entry]
    execution_provider = providers[0].lower() if providers else "cpu"
    decoder = config["model"]["decoder"]["filename"]
    try:
        model = ir.load(folder / decoder)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx_ir's own errors alike
        reason = first_line(exc)
        raise InputError(f"{what}: '{decoder}' is not a readable ONNX graph: {reason}") from exc
    # A mixed-precision int4 model keeps some MatMuls at int8 (its LM head, say): its precision is its narrowest.
    quantized = [node.attributes for node in model.graph if node.op_type == "MatMulNBits"]
    if quantized:
        attrs = min(quantized, key=lambda a: a["bits"].as_int())
        bits = attrs["bits"].as_int()
        block = attrs["block_size"].as_int()
        level = attrs["accuracy_level"].as_int() if "accuracy_level" in attrs else 0
        return Description(f"int{bits}", execution_provider, block if bits == 4 else None, level)
    dtypes = [value.const_value.dtype.name for value in model.graph.initializers.values() if value.const_value]
    floats = [FLOAT_PRECISIONS[name] for name in dtypes if name in FLOAT_PRECISIONS]
    return Description(max(set(floats), key=floats.count) if floats else "unknown", execution_provider)


def fetch_checked(source: OnnxSource, value: str) -> tuple[Path, str, Description]:
    """The prebuilt folder of ``onnx_source`` (checked, described) and, for a hub source, the commit that pins it.

    A local folder's pin is its content digest, which the step takes from the manifest it builds anyway, so that
    the folder is read once; this returns ``""`` for it.
    """
    token = os.environ.get("HF_TOKEN") or None
    pin = resolve(source, token) if source.kind == "hub" else ""
    if pin:
        logger.info("resolved %s@%s to commit %s", source.repo_id, source.revision, pin)
    folder = fetch(source, pin, token)
    what = f"onnx_source '{value}'" + (f" (commit {pin})" if pin else "")
    config = check_folder(folder, what)
    return folder, pin, describe(folder, config, what)


def label(source: OnnxSource) -> str:
    """How logs name the source: ``export``, the local folder, or the hub form at its revision."""
    if source.kind == "local":
        return str(source.path)
    return source.pinned(source.revision) if source.kind == "hub" else EXPORT


def source_tags(source: OnnxSource, pin: str) -> dict[str, str]:
    """``llmflow.onnx_source`` (a hub source at its commit), and for a prebuilt model what pins its content."""
    if source.kind == EXPORT:
        return {TAG_ONNX_SOURCE: EXPORT}
    where = source.pinned(pin) if source.kind == "hub" else str(source.path)
    return {TAG_ONNX_SOURCE: where, TAG_ONNX_SOURCE_SHA: pin}
