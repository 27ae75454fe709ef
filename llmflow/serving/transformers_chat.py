"""The endpoint's backend for a transformers ``llm/v1/chat`` model: the ONNX pyfunc's request checks over its pipeline.

MLflow's own scoring path for this flavour (``mlflow models serve``) passes some bad requests to the pipeline: an
unknown role, ``max_tokens`` 0 or a prompt far over the context get a 200, an empty ``messages`` list a 500, and its
``stop`` loads a tokenizer by the model's recorded name (see the README). The endpoint therefore drives the
transformers model as it drives the ONNX pyfunc, through ``prepare`` (``chat_protocol`` parses and checks the request,
the prompt is tokenised and its budget checked against the context), ``generate`` (text as it comes, per row) and
``context_length``, so both flavours refuse the same requests with the same 400s. Stop strings are cut from the text
as the ONNX model cuts them, with the pipeline's own tokenizer: nothing is read from the Hugging Face Hub. A
``seed`` (with ``temperature`` > 0) seeds the row's own random generator. ``response_format`` and ``tools`` are
refused with a 400 naming them: this token loop has no guided generation (a conversation that used tools still
renders, as ``tool_prompt`` writes past calls and results as text).

Rows run one after another, each in its own token loop over the model's key-value cache: this is the reference
model, served for comparison and as a fallback, not the fast path. torch and transformers are imported only here,
and only the endpoint imports this module, when it serves a transformers model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmflow.chat_model import chat_protocol as protocol
from llmflow.chat_model.rows import Row

CHAT_TASK = "llm/v1/chat"


class IncrementalDecoder:
    """The text each new token adds to a sequence, from the whole sequence decoded: a character that spans two
    tokens comes out once its last token is in, as onnxruntime-genai's ``TokenizerStream`` gives it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def decode(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
            return ""
        new, self.sent = text[self.sent :], len(text)
        return new


def generation_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """The settings a request gets for what it does not give, from the logged model config (pipeline kwargs):
    greedy unless the config samples (``do_sample``), as MLflow's own scoring of the model does."""
    defaults = dict(protocol.GENERATION_DEFAULTS)
    defaults["max_new_tokens"] = model_config.get("max_new_tokens", defaults["max_new_tokens"])
    if model_config.get("do_sample"):
        defaults |= {"temperature": model_config.get("temperature", 1.0), "top_k": model_config.get("top_k", 50)}
        defaults["top_p"] = model_config.get("top_p", 1.0)
    return defaults


class TransformersChat:
    """A logged transformers chat pipeline, driven by the endpoint like the ONNX pyfunc (``prepare``, ``generate``,
    ``context_length``)."""

    def __init__(self, pipeline: Any, model_config: dict[str, Any]) -> None:
        self.model, self.tokenizer = pipeline.model, pipeline.tokenizer
        self.model.eval()
        context = getattr(self.model.config, "max_position_embeddings", None)
        if not context:
            raise TypeError(f"the model's config ({type(self.model.config).__name__}) gives no context length")
        self.context_length = int(context)
        self.defaults = generation_defaults(model_config)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = frozenset(int(token) for token in [*eos, self.tokenizer.eos_token_id] if token is not None)

    @classmethod
    def from_pyfunc(cls, model: Any) -> TransformersChat:
        """The backend of a loaded pyfunc model of the transformers flavour; ``TypeError`` for any other task."""
        task = model.metadata.flavors["transformers"].get("inference_task")
        if task != CHAT_TASK:
            raise TypeError(f"the transformers model's task is {task!r}; the endpoint serves {CHAT_TASK!r} models")
        return cls(model.get_raw_model(), dict(model.model_config or {}))

    def prepare(self, model_input: Any, params: dict[str, Any] | None) -> list[Row]:
        """Parse and check every row, and tokenize it; raises ``protocol.Refused`` before any generation starts."""
        requests = protocol.parse_request(model_input, self.defaults, params)
        rows = []
        for number, request in enumerate(requests):
            where = f"row {number}: " if len(requests) > 1 else ""
            if request.tool_fields:  # refused, not ignored: tools need guidance (the ONNX model's, og's)
                field = request.tool_fields[0]
                raise protocol.invalid(
                    f"{where}{field} is not supported by the transformers backend (it has no guided generation); "
                    "serve the ONNX model for tools",
                    field,
                )
            if request.settings.guidance is not None:  # refused, not ignored: this token loop has no guidance
                raise protocol.invalid(
                    f"{where}response_format other than text is not supported by the transformers backend; "
                    "serve the ONNX model for JSON output",
                    protocol.RESPONSE_FORMAT,
                )
            text = self._chat_prompt(request) if request.form == protocol.CHAT else request.prompt
            # As MLflow's pipeline tokenises a prompt: the chat template already holds the special tokens.
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            budget = protocol.token_budget(request, len(ids), self.context_length, where)
            decoder = IncrementalDecoder(self.tokenizer)
            rows.append(Row(request, ids, budget, decoder, protocol.StopScanner(request.settings.stop)))
        return rows

    def _chat_prompt(self, request: protocol.Request) -> str:
        if not self.tokenizer.chat_template:
            raise protocol.invalid(
                "messages are not accepted: the model's tokenizer has no chat template", protocol.CHAT
            )
        try:
            # The conversation as ``tool_prompt`` renders it: past tool calls and results as text any template takes.
            return self.tokenizer.apply_chat_template(
                list(request.tool_prompt.messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # the template itself refused the conversation (raise_exception)
            raise protocol.invalid(f"messages do not fit the model's chat template: {error}", protocol.CHAT) from None

    def generate(self, batch: list[Row]) -> Iterator[tuple[int, str]]:
        """Generate every row of ``batch``, one after another; yield ``(row index, text)`` as text comes.

        A row whose ``finish_reason`` is set from outside (a client that left) takes no more tokens.
        """
        for texts in self.generate_steps(batch):
            yield from texts

    def generate_steps(self, batch: list[Row]) -> Iterator[list[tuple[int, str]]]:
        """``generate`` one token at a time, as the endpoint's scheduler drives it: per token the ``(row index,
        text)`` it made (empty when it made none yet). A row has ended once its ``finish_reason`` is set."""
        for index, row in enumerate(batch):
            for text in self._row(row):
                yield [(index, text)] if text else []

    def _row(self, row: Row) -> Iterator[str]:
        """The text each new token of ``row`` makes safe to show (often empty), until the row ends."""
        import torch

        settings = row.request.settings
        pick = _sampler(settings) if settings.temperature > 0 else _greedy
        draws = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        ids, past = torch.tensor([list(row.ids)]), None
        with torch.inference_mode():
            while row.finish_reason is None:
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = pick(out.logits[:, -1, :].float(), draws)
                yield row.push(token, self.eos)
                ids = torch.tensor([[token]])


def _greedy(logits: Any, draws: Any) -> int:
    return int(logits.argmax(dim=-1))


def _sampler(settings: protocol.Settings) -> Any:
    """The next token drawn as transformers' ``generate`` draws it: temperature, then top-k, then top-p."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList(
        [
            TemperatureLogitsWarper(settings.temperature),
            TopKLogitsWarper(settings.top_k),
            TopPLogitsWarper(settings.top_p),
        ]
    )

    def pick(logits: Any, draws: Any) -> int:
        probabilities = torch.softmax(warpers(None, logits), dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=draws))

    return pick
