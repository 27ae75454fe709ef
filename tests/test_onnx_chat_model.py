"""The ONNX chat pyfunc: request parsing and checks (pure functions), then generation on the tiny Phi-3.

The tiny model has memorised data/qa.jsonl ("What is the capital of Spain?" -> "Madrid", ...). The model is
loaded straight from the session's ONNX export; tests/test_log_pyfunc.py covers the logged model.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from mlflow.pyfunc import PythonModelContext

from llmflow import PROJECT_ROOT
from llmflow.chat_model import chat_protocol as protocol
from llmflow.chat_model.chat_protocol import Request, Settings, StopScanner
from llmflow.chat_model.onnx_chat_model import OnnxChatModel
from llmflow.chat_model.tool_prompt import prepare

SPAIN, FRANCE, MONA_LISA = (
    "What is the capital of Spain?",
    "What is the capital of France?",
    "Who painted the Mona Lisa?",
)
QA = [json.loads(line) for line in (PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines()]
DEFAULTS = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
INVALID = ErrorCode.Name(INVALID_PARAMETER_VALUE)


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def chat(question: str, **options: Any) -> dict[str, Any]:
    return {"messages": [user(question)], **options}


def phi3(question: str) -> str:
    return f"<|user|>\n{question}<|end|>\n<|assistant|>\n"


def content(response: dict[str, Any]) -> str:
    return response["choices"][0]["message"]["content"]


def stable(answer: Any) -> Any:
    """An answer without what differs between two calls (a chat completion's id and creation time)."""
    return {k: v for k, v in answer.items() if k not in ("id", "created")} if isinstance(answer, dict) else answer


def load(onnx_dir: Path, **config: Any) -> OnnxChatModel:
    model = OnnxChatModel()
    model.load_context(PythonModelContext(artifacts={"onnx": str(onnx_dir)}, model_config={**DEFAULTS, **config}))
    return model


@pytest.fixture(scope="module")
def model(onnx_dir: Path) -> OnnxChatModel:
    return load(onnx_dir, model_name="tiny/phi3")


@pytest.fixture(scope="module")
def hf_tokenizer(onnx_dir: Path) -> Any:
    """The Hugging Face tokenizer saved in the ONNX folder: an independent count of tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(onnx_dir))


def hf_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def raises_invalid(match: str) -> Any:
    return pytest.raises(MlflowException, match=match)


# --- unit tier: parsing and checking requests (no model) ----------------------------------------------------


def test_rows_of_every_input_shape():
    frame = pd.DataFrame({"prompt": ["a", None], "messages": [None, [user("q")]], "max_tokens": [np.nan, 8.0]})
    assert protocol.rows_of(frame) == [{"prompt": "a"}, {"messages": [user("q")], "max_tokens": 8.0}]
    assert protocol.rows_of(chat("q", stop=np.array(["x"]))) == [{"messages": [user("q")], "stop": ["x"]}]
    assert protocol.rows_of([{"prompt": "a"}, {"prompt": "b"}]) == [{"prompt": "a"}, {"prompt": "b"}]
    # The cookbook's column form, as a dict or as the single row schema enforcement makes of it.
    expanded = [{"prompt": "a", "max_tokens": 2}, {"prompt": "b", "max_tokens": 2}]
    assert protocol.rows_of({"prompt": ["a", "b"], "max_tokens": 2}) == expanded
    assert protocol.rows_of(pd.DataFrame([{"prompt": np.array(["a", "b"]), "max_tokens": 2}])) == expanded


@pytest.mark.parametrize("bad", ["text", 3, [1, 2], pd.DataFrame(), []])
def test_rows_of_refuses_what_is_not_a_request(bad: Any):
    with raises_invalid("model input"):
        protocol.rows_of(bad)


def test_row_fields_override_params_which_override_the_model_config():
    options = protocol.generation_options(DEFAULTS, {"temperature": 0.5, "max_new_tokens": 4})
    assert options == {"max_new_tokens": 4, "temperature": 0.5, "top_p": 1.0, "top_k": 50}
    request = protocol.parse_row(chat("q", top_k=3, stop="\n"), options)
    settings = Settings(max_tokens=4, temperature=0.5, top_p=1.0, top_k=3, stop=("\n",))
    assert request == Request("messages", (user("q"),), None, settings, prepare([user("q")]))
    explicit = protocol.parse_row({"prompt": "p", "max_tokens": 9.0, "temperature": 0}, options)
    assert (explicit.form, explicit.prompt, explicit.messages) == ("prompt", "p", None)
    assert explicit.settings == Settings(9, 0.0, 1.0, 50, (), explicit_max_tokens=True)


def test_every_greedy_row_shares_a_generator_and_sampling_rows_group_by_settings():
    assert Settings(8, 0.0, 0.5, 3).sampling_key is None
    assert Settings(8, 0.0, 0.5, 3).sampling_key == Settings(2, 0.0, 1.0, 50).sampling_key
    assert Settings(8, 0.7, 0.9, 5).sampling_key == (0.7, 0.9, 5) != Settings(8, 0.7, 0.9, 6).sampling_key


BAD_ROWS = [
    ({"temperature": 0.5}, r"exactly one of 'messages' \(chat\) or 'prompt' \(raw prompt\); got neither"),
    ({"messages": [user("q")], "prompt": "p"}, "exactly one of 'messages' .* got both"),
    ({"messages": []}, "messages must hold at least one message; got an empty list"),
    ({"messages": "hello"}, r"messages must be a list of \{role, content\} objects; got str"),
    ({"messages": ["hello"]}, r"messages\[0\] must be an object with 'role' and 'content'; got str"),
    ({"messages": [user("q"), {"role": "tool", "content": "x"}]}, r"messages\[1\]\.tool_call_id must be the id"),
    ({"messages": [{"role": "user", "content": 5}]}, r"messages\[0\]\.content must be a string; got int 5"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\]\.content must be a string; got NoneType"),
    ({"prompt": ""}, "prompt must be a non-empty string; got str ''"),
    ({"prompt": 5}, "prompt must be a non-empty string; got int 5"),
    (chat("q", max_tokens=0), "max_tokens must be a whole number of 1 or more; got 0"),
    (chat("q", max_tokens=-2), "max_tokens must be a whole number of 1 or more; got -2"),
    (chat("q", max_tokens=2.5), "max_tokens must be a whole number of 1 or more; got 2.5"),
    (chat("q", max_tokens=True), "max_tokens must be a whole number of 1 or more; got True"),
    (chat("q", temperature=-1), r"temperature must be a number of 0 \(greedy\) or more; got -1"),
    (chat("q", top_p=0), r"top_p must be a number in \(0, 1\]; got 0"),
    (chat("q", top_p=1.5), r"top_p must be a number in \(0, 1\]; got 1.5"),
    (chat("q", top_k=0), "top_k must be a whole number of 1 or more; got 0"),
    (chat("q", stop=[""]), "stop must be a non-empty string or a list of non-empty strings; got"),
    (chat("q", stop=5), "stop must be a non-empty string or a list of non-empty strings; got 5"),
    (chat("q", n=2), r"unknown field\(s\) \['n'\]; accepted: messages, prompt, max_tokens"),
    ({"messages": [{**user("q"), "name": "ann"}]}, r"messages\[0\]\.name is not supported: the model's chat template"),
    ({"messages": [{**user("q"), "tone": 1}]}, r"messages\[0\] has unknown field\(s\) \['tone'\]; accepted: role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]},
        r"content must be a string; got list",
    ),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_a_bad_row_names_its_field(row: dict[str, Any], message: str):
    with raises_invalid(message) as caught:
        protocol.parse_request(row, DEFAULTS, None)
    assert caught.value.error_code == INVALID


@pytest.mark.parametrize(
    ("row", "param"),
    [
        ({"messages": [user("q"), {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
        ({"messages": [{**user("q"), "name": "ann"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": []}, "messages"),
        (chat("q", top_p=0), "top_p"),
        (chat("q", response_format={"type": "yaml"}), "response_format"),
    ],
)
def test_a_refusal_holds_the_path_of_its_field_for_the_endpoints_param(row: dict[str, Any], param: str):
    with raises_invalid(re.escape(param)) as caught:
        protocol.parse_request(row, DEFAULTS, None)
    assert caught.value.param == param


def test_the_developer_role_is_read_as_system_and_a_null_field_is_not_given():
    developer = protocol.parse_row({"messages": [{"role": "developer", "content": "Be brief."}, user("q")]}, DEFAULTS)
    system = protocol.parse_row({"messages": [{"role": "system", "content": "Be brief."}, user("q")]}, DEFAULTS)
    assert developer == system
    assert developer.messages[0] == {"role": "system", "content": "Be brief."}
    assert protocol.parse_row({"messages": [{**user("q"), "name": None}]}, DEFAULTS).messages == (user("q"),)
    # A null field is not given: an assistant turn as the openai client sends it back.
    answered = {"role": "assistant", "content": "a", "refusal": None, "tool_calls": None}
    assert protocol.parse_row({"messages": [user("q"), answered]}, DEFAULTS).messages[1] == {
        "role": "assistant",
        "content": "a",
    }


def test_errors_name_the_row_when_there_are_several():
    with raises_invalid(r"^row 1: max_tokens must be a whole number"):
        protocol.parse_request([chat("q"), chat("q", max_tokens=0)], DEFAULTS, None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_new_tokens": 0}, "parameter max_new_tokens must be a whole number of 1 or more; got 0"),
        ({"top_p": 1.5}, r"parameter top_p must be a number in \(0, 1\]; got 1.5"),
        ({"temperature": -1}, "parameter temperature must be a number of 0 .* got -1"),
        ({"beam_width": 4}, r"unknown parameter\(s\) \['beam_width'\]; accepted: max_new_tokens"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, Any], message: str):
    with raises_invalid(message) as caught:
        protocol.generation_options(DEFAULTS, params)
    assert caught.value.error_code == INVALID


def test_token_budget_cuts_a_default_and_refuses_an_explicit_max_tokens_that_does_not_fit():
    default = protocol.parse_row(chat("q"), {**DEFAULTS, "max_new_tokens": 256})
    assert protocol.token_budget(default, 500, 512) == 12
    assert protocol.token_budget(default, 10, 512) == 256
    explicit = protocol.parse_row(chat("q", max_tokens=13), DEFAULTS)
    assert protocol.token_budget(explicit, 499, 512) == 13
    with raises_invalid(
        "^row 2: max_tokens 13 with a prompt of 500 tokens exceeds the model's context length of 512 tokens; "
        "max_tokens may be at most 12 for this prompt$"
    ):
        protocol.token_budget(explicit, 500, 512, "row 2: ")
    with raises_invalid("^messages has 512 tokens; the model's context length is 512 tokens, so a prompt may have"):
        protocol.token_budget(default, 512, 512)


@pytest.mark.parametrize(
    ("stops", "pieces", "shown", "stopped", "held"),
    [
        ((), ["Leo", "nardo"], ["Leo", "nardo"], False, ""),
        ((" da",), ["Leonardo", " d", "a Vinci"], ["Leonardo", "", ""], True, ""),
        (("Vincent",), ["Leonardo da ", "Vin", "c"], ["Leonardo da ", "", ""], False, "Vinc"),
        (("Vincent",), ["Leonardo da ", "Vin", "ci"], ["Leonardo da ", "", "Vinci"], False, ""),
        (("ci", "da"), ["Leonardo da Vinci"], ["Leonardo "], True, ""),
        (("\n",), ["Madrid\nParis"], ["Madrid"], True, ""),
    ],
)
def test_stop_scanner_holds_back_what_may_start_a_stop_sequence(stops, pieces, shown, stopped, held):
    scanner = StopScanner(stops)
    results = [scanner.feed(piece) for piece in pieces]
    assert [text for text, _ in results] == shown
    assert results[-1][1] is stopped
    # What is held back (the start of a stop sequence that never completed) comes out when generation ends.
    assert scanner.flush() == held


def test_find_chat_template_prefers_tokenizer_config_then_the_jinja_file(tmp_path: Path):
    assert protocol.find_chat_template(tmp_path) is None
    (tmp_path / "chat_template.jinja").write_text("{{ jinja }}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "x"}))
    assert protocol.find_chat_template(tmp_path) == "{{ jinja }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ config }}"}))
    assert protocol.find_chat_template(tmp_path) == "{{ config }}"


def test_response_and_chunk_shapes():
    response = protocol.chat_completion("m", {"role": "assistant", "content": "Madrid"}, "stop", 15, 4)
    assert response["id"].startswith("chatcmpl-") and isinstance(response["created"], int)
    assert stable(response) == {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Madrid"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19},
    }
    chunk = protocol.chat_chunk("id-1", 7, "m", "Ma")
    assert chunk == {
        "id": "id-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Ma"}, "finish_reason": None}],
    }


# --- integration tier: the tiny Phi-3 -----------------------------------------------------------------------


def test_chat_response_has_the_openai_shape_and_the_answer(model: OnnxChatModel, hf_tokenizer: Any):
    [response] = model.predict(None, chat(SPAIN))
    completion_tokens = len(hf_tokenizer("Madrid", add_special_tokens=False)["input_ids"])
    prompt_tokens = hf_prompt_tokens(hf_tokenizer, [user(SPAIN)])
    assert response["id"].startswith("chatcmpl-")
    assert stable(response) == {
        "object": "chat.completion",
        "model": "tiny/phi3",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Madrid"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@pytest.mark.parametrize("item", QA[::7], ids=lambda item: item["answer"])
def test_usage_counts_equal_the_tokenizers_counts(model: OnnxChatModel, hf_tokenizer: Any, item: dict[str, str]):
    [response] = model.predict(None, chat(item["question"]))
    assert content(response) == item["answer"]
    assert response["usage"]["prompt_tokens"] == hf_prompt_tokens(hf_tokenizer, [user(item["question"])])
    assert response["usage"]["completion_tokens"] == len(
        hf_tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
    )


def test_a_system_turn_is_part_of_the_prompt(model: OnnxChatModel, hf_tokenizer: Any):
    messages = [{"role": "system", "content": "You answer in one word."}, user(SPAIN)]
    [response] = model.predict(None, {"messages": messages})
    assert response["usage"]["prompt_tokens"] == hf_prompt_tokens(hf_tokenizer, messages)
    assert response["usage"]["prompt_tokens"] > hf_prompt_tokens(hf_tokenizer, [user(SPAIN)])
    assert response["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_developer_turn_is_answered_as_the_same_system_turn(model: OnnxChatModel):
    def answer(role: str) -> dict[str, Any]:
        messages = [{"role": role, "content": "You answer in one word."}, user(SPAIN)]
        return stable(model.predict(None, {"messages": messages})[0])

    developer, system = answer("developer"), answer("system")
    assert developer == system
    assert developer["usage"]["prompt_tokens"] > model.predict(None, chat(SPAIN))[0]["usage"]["prompt_tokens"]


def test_a_multi_turn_conversation_answers_the_last_question(model: OnnxChatModel, hf_tokenizer: Any):
    messages = [user(FRANCE), {"role": "assistant", "content": "Paris"}, user(SPAIN)]
    [response] = model.predict(None, {"messages": messages})
    assert content(response) == "Madrid"
    assert response["usage"]["prompt_tokens"] == hf_prompt_tokens(hf_tokenizer, messages)


def test_max_tokens_ends_the_answer_with_finish_reason_length(model: OnnxChatModel):
    [response] = model.predict(None, chat(MONA_LISA, max_tokens=3))
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 3
    assert content(response) != "Leonardo da Vinci" and "Leonardo da Vinci".startswith(content(response))


@pytest.mark.parametrize(
    ("stop", "answer", "fewer_tokens"),
    [
        ([" da"], "Leonardo", True),
        # The last token completes " Vinci": generation stops where it would have anyway.
        (" Vinci", "Leonardo da", False),
        (["Vincent", "xyz"], "Leonardo da Vinci", False),
    ],
)
def test_stop_sequences_cut_the_answer_before_them(model: OnnxChatModel, stop: Any, answer: str, fewer_tokens: bool):
    [response] = model.predict(None, chat(MONA_LISA, stop=stop))
    assert content(response) == answer
    assert response["choices"][0]["finish_reason"] == "stop"
    [full] = model.predict(None, chat(MONA_LISA))
    assert (response["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]) is fewer_tokens


def test_the_prompt_form_returns_strings_and_takes_the_old_params(model: OnnxChatModel):
    assert model.predict(None, pd.DataFrame({"prompt": [phi3(SPAIN), phi3(FRANCE)]})) == ["Madrid", "Paris"]
    assert model.predict(None, {"prompt": phi3(SPAIN)}) == ["Madrid"]
    [short] = model.predict(None, pd.DataFrame({"prompt": [phi3(SPAIN)]}), params={"max_new_tokens": 1})
    assert short and short != "Madrid" and "Madrid".startswith(short)
    # top_k=1 samples from a single candidate: the sampling path, with a result that can be checked.
    sampled = model.predict(None, [{"prompt": phi3(SPAIN)}], params={"temperature": 0.7, "top_p": 0.9, "top_k": 1})
    assert sampled == ["Madrid"]


def test_the_model_config_gives_the_defaults(onnx_dir: Path):
    model = load(onnx_dir, max_new_tokens=2)
    assert model.defaults == {**DEFAULTS, "max_new_tokens": 2}
    assert model.model_name == onnx_dir.name
    [response] = model.predict(None, chat(SPAIN))
    assert response["usage"]["completion_tokens"] == 2 and response["choices"][0]["finish_reason"] == "length"
    [longer] = model.predict(None, chat(SPAIN), params={"max_new_tokens": 8})
    assert content(longer) == "Madrid"


def test_a_long_prompt_without_max_tokens_gets_what_is_left_of_the_context(model: OnnxChatModel):
    question = "What is the capital of Spain? " * 49
    [response] = model.predict(None, chat(question), params={"max_new_tokens": 500})
    assert response["usage"]["prompt_tokens"] > 400
    assert response["usage"]["total_tokens"] <= model.context_length


def test_the_chat_template_comes_from_the_onnx_folder(onnx_dir: Path, tmp_path: Path):
    folder = shutil.copytree(onnx_dir, tmp_path / "onnx")
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text("<|system|>\nAnswer briefly.<|end|>\n" + template)
    [changed] = load(folder).predict(None, chat(SPAIN))
    [original] = load(onnx_dir).predict(None, chat(SPAIN))
    prefix = len(load(onnx_dir).tokenizer.encode("<|system|>\nAnswer briefly.<|end|>\n"))
    assert changed["usage"]["prompt_tokens"] == original["usage"]["prompt_tokens"] + prefix
    (folder / "chat_template.jinja").unlink()
    without = load(folder)
    with raises_invalid("messages are not accepted: the model's ONNX folder has no chat template"):
        without.predict(None, chat(SPAIN))
    assert without.predict(None, {"prompt": phi3(SPAIN)}) == ["Madrid"]


def test_a_template_that_refuses_the_conversation_is_a_bad_request(onnx_dir: Path, tmp_path: Path):
    folder = shutil.copytree(onnx_dir, tmp_path / "onnx")
    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turn') }}{% endif %}"
    (folder / "chat_template.jinja").write_text(refusing + (folder / "chat_template.jinja").read_text())
    model = load(folder)
    with raises_invalid("messages do not fit the model's chat template: no system turn"):
        model.predict(None, {"messages": [{"role": "system", "content": "x"}, user(SPAIN)]})
    assert content(model.predict(None, chat(SPAIN))[0]) == "Madrid"


def test_max_batch_size_must_be_one_onnxruntime_genai_accepts(onnx_dir: Path):
    with pytest.raises(ValueError, match="model_config max_batch_size 33 must be 1 to 32"):
        load(onnx_dir, max_batch_size=33)


# --- batching ---------------------------------------------------------------------------------------------


class CountingGenerator:
    """An onnxruntime-genai generator that counts the tokens it has generated."""

    def __init__(self, generator: og.Generator) -> None:
        self.generator = generator
        self.steps = 0

    def generate_next_token(self) -> None:
        self.steps += 1
        self.generator.generate_next_token()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


class GeneratorSpy:
    """Records the onnxruntime-genai generators the model makes, and the batch size of each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batch_sizes: list[int] = []
        self.generators: list[CountingGenerator] = []
        self.real = og.Generator
        monkeypatch.setattr(og, "Generator", self)

    def __call__(self, model: og.Model, params: og.GeneratorParams) -> CountingGenerator:
        self.batch_sizes.append(int(params.get_search_options()["batch_size"]))
        self.generators.append(CountingGenerator(self.real(model, params)))
        return self.generators[-1]


MIXED_LENGTHS = [
    chat(SPAIN),
    {"messages": [{"role": "system", "content": "You are a helpful assistant. " * 12}, user(MONA_LISA)]},
    {"messages": [user(FRANCE), {"role": "assistant", "content": "Paris"}, user(SPAIN)]},
    chat("Hi"),
    {"prompt": phi3(MONA_LISA)},
    chat(MONA_LISA, max_tokens=3),
    chat(MONA_LISA, stop=[" Vinci"]),
]


def test_rows_of_one_request_run_in_one_batched_generator(model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch):
    alone = [stable(model.predict(None, row)[0]) for row in MIXED_LENGTHS]
    spy = GeneratorSpy(monkeypatch)
    together = [stable(answer) for answer in model.predict(None, MIXED_LENGTHS)]
    assert spy.batch_sizes == [len(MIXED_LENGTHS)]
    assert together == alone
    assert [content(a) for a in together[:3]] == ["Madrid", alone[1]["choices"][0]["message"]["content"], "Madrid"]
    assert len({answer["usage"]["prompt_tokens"] for answer in together if isinstance(answer, dict)}) >= 4


def test_batched_greedy_answers_equal_single_answers_on_the_whole_qa_set(onnx_dir: Path):
    model = load(onnx_dir, max_batch_size=32, max_new_tokens=24)
    rows = [chat(item["question"]) for item in QA]
    together = [content(answer) for answer in model.predict(None, rows)]
    assert together == [content(model.predict(None, row)[0]) for row in rows]
    assert together == [item["answer"] for item in QA]


def test_batches_respect_max_batch_size_and_group_rows_by_sampling_settings(
    onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    model = load(onnx_dir, max_batch_size=2)
    spy = GeneratorSpy(monkeypatch)
    rows = [chat(item["question"]) for item in QA[:5]]
    assert [content(a) for a in model.predict(None, rows)] == [item["answer"] for item in QA[:5]]
    assert spy.batch_sizes == [2, 2, 1]
    spy.batch_sizes.clear()
    sampled = dict(temperature=0.5, top_k=1)
    rows = [chat(SPAIN), chat(FRANCE, **sampled), chat(MONA_LISA), chat(SPAIN, **sampled)]
    assert [content(a) for a in model.predict(None, rows)] == ["Madrid", "Paris", "Leonardo da Vinci", "Madrid"]
    assert sorted(spy.batch_sizes) == [2, 2]


def test_rows_whose_padded_batch_would_overflow_the_context_are_split(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch):
    model = load(onnx_dir)
    long = chat("What is the capital of Spain? " * 45, max_tokens=20)
    short = chat(MONA_LISA, max_tokens=100)
    spy = GeneratorSpy(monkeypatch)
    answers = model.predict(None, [short, long])
    assert spy.batch_sizes == [1, 1]
    assert content(answers[0]) == "Leonardo da Vinci"
    assert answers[1]["usage"]["prompt_tokens"] + 100 > model.context_length


# --- streaming --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", [chat(MONA_LISA), chat(MONA_LISA, max_tokens=4), chat(MONA_LISA, stop=["Vin"])])
def test_chat_stream_joins_to_the_answer(model: OnnxChatModel, row: dict[str, Any]):
    [answer] = model.predict(None, row)
    chunks = list(model.predict_stream(None, row))
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "tiny/phi3" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    pieces = [chunk["choices"][0]["delta"]["content"] for chunk in chunks]
    assert "".join(pieces) == content(answer)
    assert len([piece for piece in pieces if piece]) > 1
    *body, last = chunks
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in body)
    assert last["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
    assert last["usage"] == answer["usage"]


def test_prompt_stream_yields_strings_that_join_to_the_answer(model: OnnxChatModel):
    row = {"prompt": phi3(MONA_LISA)}
    pieces = list(model.predict_stream(None, row, params={"max_new_tokens": 32}))
    assert all(isinstance(piece, str) and piece for piece in pieces) and len(pieces) > 1
    assert "".join(pieces) == model.predict(None, row)[0] == "Leonardo da Vinci"


def test_stream_yields_each_piece_as_its_token_comes(model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch):
    spy = GeneratorSpy(monkeypatch)
    stream = model.predict_stream(None, chat(MONA_LISA))
    first = next(stream)
    [generator] = spy.generators
    assert first["choices"][0]["delta"]["content"] == "L"
    assert generator.steps == 1
    rest = list(stream)
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in rest) == "eonardo da Vinci"
    assert generator.steps == rest[-1]["usage"]["completion_tokens"] + 1  # and the end-of-answer token


def test_stream_takes_one_request_and_checks_it_first(model: OnnxChatModel):
    with raises_invalid("predict_stream takes exactly one request; got 2 rows"):
        next(model.predict_stream(None, [chat(SPAIN), chat(FRANCE)]))
    with raises_invalid("max_tokens must be a whole number"):
        next(model.predict_stream(None, chat(SPAIN, max_tokens=0)))


# --- concurrency ------------------------------------------------------------------------------------------

CONCURRENT_REQUESTS: list[tuple[str, Any, dict[str, Any] | None]] = [
    ("predict", chat(SPAIN), None),
    ("predict", [chat(FRANCE), chat(MONA_LISA, max_tokens=4)], None),
    ("predict", pd.DataFrame({"prompt": [phi3(SPAIN), phi3(MONA_LISA)]}), {"max_new_tokens": 24}),
    ("stream", chat(MONA_LISA), None),
    ("predict", chat(MONA_LISA, stop=[" da"]), None),
    ("stream", {"prompt": phi3(FRANCE)}, None),
    ("predict", MIXED_LENGTHS, None),
    ("predict", [chat(item["question"]) for item in QA[:12]], None),
    ("stream", chat(SPAIN, max_tokens=2), None),
    ("predict", chat(MONA_LISA, temperature=0.9, top_k=1), None),
]


def call(model: OnnxChatModel, method: str, model_input: Any, params: dict[str, Any] | None) -> Any:
    if method == "stream":
        return [stable(chunk) for chunk in model.predict_stream(None, model_input, params)]
    return [stable(answer) for answer in model.predict(None, model_input, params)]


def test_concurrent_calls_get_the_answers_they_get_alone(model: OnnxChatModel):
    requests = CONCURRENT_REQUESTS * 2
    sequential = [call(model, *request) for request in requests]
    with ThreadPoolExecutor(max_workers=10) as pool:
        concurrent = list(pool.map(lambda request: call(model, *request), requests))
    assert concurrent == sequential
    assert content(sequential[0][0]) == "Madrid"


# --- bad input --------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ({"temperature": 0.5}, None, "exactly one of 'messages' .* got neither"),
    ({"messages": [user(SPAIN)], "prompt": phi3(SPAIN)}, None, "got both"),
    ({"messages": []}, None, "messages must hold at least one message"),
    ({"messages": [{"role": "robot", "content": "x"}]}, None, r"messages\[0\]\.role 'robot' is not accepted"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, None, r"messages\[0\]\.content must be a string"),
    (chat(SPAIN, max_tokens=0), None, "max_tokens must be a whole number of 1 or more; got 0"),
    (chat("What is the capital of Spain? " * 40, max_tokens=200), None, "max_tokens 200 with a prompt of \\d+ tokens"),
    (chat("What is the capital of Spain? " * 60), None, "messages has \\d+ tokens; the model's context length is 512"),
    ({"prompt": phi3("What is the capital of Spain? " * 60)}, None, "prompt has \\d+ tokens; .* context length is 512"),
    ({"prompt": 7}, None, "prompt must be a non-empty string; got int 7"),
    ([chat(SPAIN), {"messages": None}], None, "row 1: a request needs exactly one of"),
    (chat(SPAIN), {"top_p": 0}, r"parameter top_p must be a number in \(0, 1\]"),
]


@pytest.mark.parametrize(("model_input", "params", "message"), BAD_REQUESTS)
def test_bad_input_is_refused_with_invalid_parameter_value_and_the_model_keeps_answering(
    model: OnnxChatModel, model_input: Any, params: dict[str, Any] | None, message: str
):
    with raises_invalid(message) as caught:
        model.predict(None, model_input, params)
    assert caught.value.error_code == INVALID
    assert caught.value.get_http_status_code() == 400
    assert content(model.predict(None, chat(SPAIN))[0]) == "Madrid"
