"""MLflow pyfunc that generates text with onnxruntime-genai; logged as models-from-code.

This file is the model: MLflow copies it next to the ONNX folder and runs it where the model is served,
where the ``llmflow`` package may be absent. It therefore imports only the standard library, mlflow,
numpy, pandas, onnxruntime_genai and the ``serving`` package it is part of (``chat_protocol``, the request and
response formats; ``generation``, the generation loop; ``rows``, a row's state), which is logged with it as its
``code_paths``.

- Artifacts: ``onnx``, the folder written by the onnxruntime-genai model builder, with its chat template; or,
  for a model logged with ``onnx_storage=reference``, none, and ``onnx_uri`` in the model config instead: the
  export run's folder (``runs:/<id>/onnx``), read where it lies on a local store and downloaded from any other.
- Model config: generation defaults ``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``, ``top_k``;
  ``model_name``, the name chat responses give; ``max_batch_size``, the most rows one generator runs.
- Input: rows that are each an OpenAI chat request (``messages`` ...) or a raw ``prompt`` (see
  ``chat_protocol``); a DataFrame, a list of dicts or one dict.
- Output: per row, a ``chat.completion`` dict for a chat request, the generated string for a prompt.
- Params: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``response_format`` (JSON text) for every
  row that does not set them.
- Structured output: a row's ``response_format`` (``json_object`` or ``json_schema``) becomes onnxruntime-genai
  guidance, so the tokens can only spell JSON that validates; a guided row runs in a generator of its own.
- Tools: a chat row's ``tools`` and ``tool_choice`` (llama.cpp's generic format: ``tools``, ``tool_prompt``) guide
  the answer to one call or a reply, read back into OpenAI's ``tool_calls`` (``tool_replies``), whole or streamed.
- ``predict`` runs rows with the same sampling settings in one batched generator; ``predict_stream``
  yields ``chat.completion.chunk`` dicts (chat) or strings (prompt) as tokens come.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import onnxruntime_genai as og
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

# The logged model carries this package as ``code/chat_model`` (its code path); the project has it in llmflow.
# This file is loaded as a script, not as a member of the package, so it cannot import relatively.
try:
    from chat_model import chat_protocol as protocol
    from chat_model import generation
    from chat_model.cpus import generation_threads, load_og_model
    from chat_model.rows import Row
    from chat_model.tool_prompt import supports_native_tools
    from chat_model.tool_replies import ReplyStream, parse
except ModuleNotFoundError:
    from llmflow.chat_model import chat_protocol as protocol
    from llmflow.chat_model import generation
    from llmflow.chat_model.cpus import generation_threads, load_og_model
    from llmflow.chat_model.rows import Row
    from llmflow.chat_model.tool_prompt import supports_native_tools
    from llmflow.chat_model.tool_replies import ReplyStream, parse

GENERATION_DEFAULTS = protocol.GENERATION_DEFAULTS
MAX_BATCH_SIZE = 16
# onnxruntime-genai 0.18 refuses a generator for more rows than this.
OG_MAX_BATCH_SIZE = 32


def onnx_folder(artifacts: dict[str, str], config: dict[str, Any]) -> Path:
    """The ONNX folder: the model's own ``onnx`` artifact, or the folder its ``onnx_uri`` names.

    A ``runs:/`` folder on a local store is read where it lies (no copy of the weights); from any other store (the
    tracking server's, S3 ...) it is downloaded, with the credentials of the process that loads the model.
    """
    if "onnx" in artifacts:
        return Path(artifacts["onnx"])
    uri = str(config.get("onnx_uri") or "")
    if not uri:
        raise ValueError("the model has neither an 'onnx' artifact nor an 'onnx_uri' in its model config")
    try:
        stored = RunsArtifactRepository.get_underlying_uri(uri) if RunsArtifactRepository.is_runs_uri(uri) else uri
        parsed = urlparse(stored)
        in_place = Path(unquote(parsed.path))
        if parsed.scheme in ("", "file") and parsed.netloc in ("", "localhost") and in_place.is_dir():
            return in_place
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise ValueError(
            f"the model's ONNX folder {uri} (logged with onnx_storage=reference) cannot be read from this "
            f"tracking server ({mlflow.get_tracking_uri()}): {str(exc).splitlines()[0]}"
        ) from exc


class OnnxChatModel(mlflow.pyfunc.PythonModel):
    """Chat requests and raw prompts in, chat completions and text out, generated by onnxruntime-genai.

    The model and tokenizer are shared and read-only; every request builds its own generator params,
    generator and tokenizer streams, so concurrent calls do not affect each other.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config or {}
        onnx_dir = onnx_folder(context.artifacts or {}, config)
        self.onnx_dir = onnx_dir  # evaluate reads the graph from here for perplexity
        # The CPUs this process is given, not onnxruntime's default guess (which used one core of two here).
        self.threads = generation_threads(config)
        self.model = load_og_model(onnx_dir, self.threads)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos = frozenset(int(token) for token in self.tokenizer.eos_token_ids)
        self.pad = int(self.tokenizer.pad_token_id)
        genai_config = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context_length = int(genai_config["model"]["context_length"])
        self.chat_template = protocol.find_chat_template(onnx_dir)
        self.supports_native = self.chat_template is not None and supports_native_tools(self._render)
        self.defaults = {name: config.get(name, value) for name, value in GENERATION_DEFAULTS.items()}
        self.model_name = str(config.get("model_name") or onnx_dir.name)
        self.max_batch_size = int(config.get("max_batch_size", MAX_BATCH_SIZE))
        if not 1 <= self.max_batch_size <= OG_MAX_BATCH_SIZE:
            raise ValueError(f"model_config max_batch_size {self.max_batch_size} must be 1 to {OG_MAX_BATCH_SIZE}")

    # The DataFrame hint tells MLflow to validate input against the logged signature, not infer one from hints.
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[Any]:
        """One answer per row: a ``chat.completion`` dict for a chat request, a string for a prompt.

        A bad request raises ``protocol.Refused`` (400) naming the field; any other error one that names only its
        type (500), with the traceback in the server's log (``protocol.internal_errors``).
        """
        with protocol.internal_errors("generating"):
            rows = self.prepare(model_input, params)
            for batch in self.batches(rows):
                for _ in self.generate(batch):
                    pass
            return [RENDER[row.request.form](self, row) for row in rows]

    def predict_stream(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: Any, params: dict[str, Any] | None = None
    ) -> Iterator[Any]:
        """Stream the answer to one request: ``chat.completion.chunk`` dicts for chat, strings for a prompt.

        Joining the chunks' text gives what ``predict`` returns for the same request; errors are ``predict``'s.
        """
        with protocol.internal_errors("generating"):
            rows = self.prepare(model_input, params)
            if len(rows) != 1:
                raise protocol.invalid(f"predict_stream takes exactly one request; got {len(rows)} rows")
            yield from STREAM[rows[0].request.form](self, rows[0])

    def _render(self, messages: str, tools: str) -> str:
        """The chat template applied without a generation prompt (``supports_native_tools`` probes it)."""
        return self.tokenizer.apply_chat_template(
            messages, template_str=self.chat_template, tools=tools, add_generation_prompt=False
        )

    def prepare(self, model_input: Any, params: dict[str, Any] | None) -> list[Row]:
        """Parse and check every row, and tokenize it; raises before any generation starts."""
        requests = protocol.parse_request(model_input, self.defaults, params, self.supports_native)
        rows = []
        for number, request in enumerate(requests):
            where = f"row {number}: " if len(requests) > 1 else ""
            ids = self.tokenizer.encode(PROMPT_TEXT[request.form](self, request))
            budget = protocol.token_budget(request, len(ids), self.context_length, where)
            guidance = request.settings.guidance
            if guidance is not None and (problem := generation.check_guidance(self.model, guidance)):
                field = protocol.TOOLS if request.tool_prompt and request.tool_prompt.plan.calls else None
                field = field or protocol.RESPONSE_FORMAT
                raise protocol.invalid(f"{where}{field} cannot be used for guided generation: {problem}", field)
            rows.append(
                Row(request, ids, budget, self.tokenizer.create_stream(), protocol.StopScanner(request.settings.stop))
            )
        return rows

    def _chat_prompt(self, request: protocol.Request) -> str:
        if self.chat_template is None:
            raise protocol.invalid(
                "messages are not accepted: the model's ONNX folder has no chat template", protocol.CHAT
            )
        prompt = request.tool_prompt  # the conversation with the tools described and past calls rendered
        try:
            return self.tokenizer.apply_chat_template(
                json.dumps(list(prompt.messages)),
                template_str=self.chat_template,
                tools=prompt.tools or "",
                add_generation_prompt=True,
            )
        except RuntimeError as error:  # the template itself refused the conversation (raise_exception)
            raise protocol.invalid(f"messages do not fit the model's chat template: {error}", protocol.CHAT) from None

    def batches(self, rows: list[Row]) -> Iterator[list[Row]]:
        """Rows that can share a generator: same sampling settings, padded prompt plus budget within the
        context, at most ``max_batch_size``; shorter prompts first, so padding stays small."""
        groups: dict[Any, list[Row]] = {}
        for number, row in enumerate(rows):
            settings = row.request.settings
            groups.setdefault(("alone", number) if settings.alone else settings.sampling_key, []).append(row)
        for group in groups.values():
            batch: list[Row] = []
            for row in sorted(group, key=lambda r: len(r.ids)):
                widest = max([len(row.ids), *(len(r.ids) for r in batch)])
                budget = max([row.budget, *(r.budget for r in batch)])
                if batch and (len(batch) == self.max_batch_size or widest + budget > self.context_length):
                    yield batch
                    batch = []
                batch.append(row)
            yield batch

    def generate(self, batch: list[Row]) -> Iterator[tuple[int, str]]:
        """Generate every row of ``batch`` in one generator; yield ``(row index, text)`` as text comes.

        A row whose ``finish_reason`` is set from outside (a client that left) takes no more tokens, and the
        generator stops before its next step once every row has ended.
        """
        for texts in self.generate_steps(batch):
            yield from texts

    def generate_steps(self, batch: list[Row]) -> Iterator[list[tuple[int, str]]]:
        """``generate`` one step at a time: per step the ``(row index, text)`` pairs it made (often empty). A row has
        ended once its ``finish_reason`` is set, so a caller that drives several batches (the endpoint's scheduler)
        can answer each row as it ends and run another batch between two steps of this one. The prompt's prefill
        runs at the first step."""
        budget = max(row.budget for row in batch)
        settings = batch[0].request.settings  # a guided row is alone in its batch (``Settings.alone``)
        generator = generation.start(
            self.model, [row.ids for row in batch], self.pad, budget, settings.guidance, **settings.sampling()
        )
        for tokens in generation.steps(generator, lambda: all(row.finish_reason for row in batch)):
            yield [
                (index, text)
                for index, (row, token) in enumerate(zip(batch, tokens, strict=True))
                if row.finish_reason is None and (text := row.push(token, self.eos))
            ]
        yield [(index, text) for index, row in enumerate(batch) if (text := row.close())]

    def _chat_response(self, row: Row) -> dict[str, Any]:
        reply = parse(row.text, row.request.tool_prompt.plan, row.finish_reason)
        return protocol.chat_completion(
            self.model_name, reply.message(), reply.finish_reason, len(row.ids), row.completion_tokens
        )

    def _chat_stream(self, row: Row) -> Iterator[dict[str, Any]]:
        """Chunks of the answer; a tool call streams as OpenAI's does (its id and name, then its arguments)."""
        chunk_id, created = protocol.completion_id(), int(time.time())
        reading = ReplyStream(row.request.tool_prompt.plan)
        for _, text in self.generate([row]):
            for delta in reading.feed(text):
                yield protocol.chat_chunk(chunk_id, created, self.model_name, delta=_with_role(delta))
        deltas, reply = reading.close(row.finish_reason)
        for delta in deltas:
            yield protocol.chat_chunk(chunk_id, created, self.model_name, delta=_with_role(delta))
        yield protocol.chat_chunk(
            chunk_id,
            created,
            self.model_name,
            "",
            reply.finish_reason,
            usage=protocol.usage(len(row.ids), row.completion_tokens),
        )

    def _prompt_stream(self, row: Row) -> Iterator[str]:
        for _, text in self.generate([row]):
            yield text


def _with_role(delta: dict[str, Any]) -> dict[str, Any]:
    """Each chunk names the role, as this model's chunks always have (a tool call's content is null)."""
    return {"role": "assistant", "content": delta.get("content"), **delta}


# Dispatch on a row's form: how its prompt is built, how its answer is returned and how it is streamed.
PROMPT_TEXT = {protocol.CHAT: OnnxChatModel._chat_prompt, protocol.PROMPT: lambda _, request: request.prompt}
RENDER = {protocol.CHAT: OnnxChatModel._chat_response, protocol.PROMPT: lambda _, row: row.text}
STREAM = {protocol.CHAT: OnnxChatModel._chat_stream, protocol.PROMPT: OnnxChatModel._prompt_stream}

mlflow.models.set_model(OnnxChatModel())
