"""One in-process configuration per process: ``python -m bench.workers SPEC.json RESULT.json``.

Each configuration runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own. The spec names
the configuration and carries the ONNX folder, the model URI, the prompts and the number of new tokens.
Every configuration is warmed up with one request before it is timed. A request's time runs from the call to
the reply, tokenisation and decoding included.

A result lists its requests with their time, their time to first token (or ``None``), their generated text and
their new-token count where the configuration knows it (``None`` for prompt-form replies, which are strings;
``bench.report`` counts those).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What a failed stream raises through MLflow: reported as the reason TTFT is n/a rather than ending the run.
STREAM_ERRORS = (NotImplementedError, TypeError, ValueError, KeyError, RuntimeError)


def peak_rss_mb() -> tuple[float, str]:
    """This process's peak RSS in MiB, and where it was read.

    ``VmHWM`` belongs to the process's own address space, which starts at ``exec``; ``ru_maxrss`` does not
    suit here, since Linux carries the forking parent's high-water mark over into it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, "VmHWM of the configuration's own process"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "getrusage(RUSAGE_SELF).ru_maxrss"


def request_record(
    seconds: float, text: str, new_tokens: int | None, tokens_from: str | None, ttft: float | None = None
) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "ttft_seconds": ttft,
        "new_tokens": new_tokens,
        "tokens_from": tokens_from,
        "text": text,
    }


def bare_loop(onnx_dir: str, max_new_tokens: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that generates for one prompt with the plain onnxruntime-genai loop and returns its record:
    encode, the project's one loop (``llmflow.chat_model.generation.greedy``), decode. TTFT: the first token's time."""
    import onnxruntime_genai as og

    from llmflow.chat_model.generation import greedy

    model = og.Model(onnx_dir)
    tokenizer = og.Tokenizer(model)

    def generate(prompt: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        ids = tokenizer.encode(prompt["templated"])
        encoded = time.perf_counter()
        tokens, first = greedy(model, ids, max_new_tokens)
        ttft = None if first is None else encoded - started + first
        text = tokenizer.decode(tokens)
        record = request_record(time.perf_counter() - started, text, len(tokens), "generator", ttft)
        return {**record, "prompt_tokens": len(ids)}

    return generate


def run_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop, one prompt at a time. Also generates, untimed, for the prompts after the timed ones, so that
    every prompt has a reference text and count. Then, with ``paired_rounds``, the pairing (``paired``)."""
    generate = bare_loop(spec["onnx_dir"], spec["max_new_tokens"])
    prompts, timed = spec["prompts"], spec["timed_prompts"]
    generate(prompts[0])
    result = {
        "form": "prompt",
        "requests": [generate(p) for p in prompts[:timed]],
        "reference": [generate(p) for p in prompts],
    }
    if spec.get("paired_rounds"):
        # Read before mlflow and the pyfunc are loaded: the peak belongs to the plain loop alone.
        result["peak_rss_mb"], result["peak_rss_source"] = peak_rss_mb()
        import mlflow

        model = mlflow.pyfunc.load_model(spec["model_uri"])
        call = pyfunc_caller(model, input_form(model), spec["max_new_tokens"], spec.get("chat_extra", {}))
        result["paired"] = paired(spec, generate, call)
    return result


def paired(spec: dict[str, Any], bare: Callable[[dict], dict], pyfunc: Callable[[dict], dict]) -> dict[str, Any]:
    """The pyfunc's requests and the plain loop's, in turns on the same prompts, in one process.

    Separate processes, timed a minute apart, differ by several percent on this machine; taking turns request by
    request (alternating which goes first) cancels that drift. The model loaded second runs a few percent slower
    here, so the bare worker loads the pyfunc second and the pyfunc worker the plain loop second: both together
    balance it. Record ``i`` of each list is round ``i // timed_prompts``, prompt ``i % timed_prompts``.
    """
    prompts = spec["prompts"][: spec["timed_prompts"]]
    calls = {"bare": bare, "pyfunc": pyfunc}
    for call in calls.values():
        call(prompts[0])
    records: dict[str, list[dict[str, Any]]] = {"bare": [], "pyfunc": []}
    for turn in range(spec["paired_rounds"]):
        for index, prompt in enumerate(prompts):
            for name in ("bare", "pyfunc") if (turn + index) % 2 == 0 else ("pyfunc", "bare"):
                records[name].append(calls[name](prompt))
    return records


def run_bare_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop with all ``batch_size`` prompts as the rows of one generator: what the engine gives a batch."""
    import onnxruntime_genai as og

    from llmflow.chat_model import generation

    model = og.Model(spec["onnx_dir"])
    tokenizer = og.Tokenizer(model)
    eos = {int(t) for t in tokenizer.eos_token_ids}
    prompts = spec["prompts"][: spec["batch_size"]]

    def generate() -> dict[str, Any]:
        started = time.perf_counter()
        ids = [tokenizer.encode(p["templated"]) for p in prompts]
        if len({len(i) for i in ids}) != 1:
            raise ValueError(f"batch prompts must have one length; got {sorted({len(i) for i in ids})} tokens")
        generator = generation.start(model, ids, 0, spec["max_new_tokens"])
        rows: list[list[int]] = [[] for _ in ids]
        ended = [False] * len(ids)
        for tokens in generation.steps(generator):
            for row, token in enumerate(tokens):
                ended[row] = ended[row] or token in eos
                if not ended[row]:
                    rows[row].append(token)
        texts = [tokenizer.decode(r) for r in rows]
        return {"seconds": time.perf_counter() - started, "texts": texts, "new_tokens": [len(r) for r in rows]}

    generate()
    calls = [generate() for _ in range(spec["batch_repeats"])]
    return {"form": "prompt", "batch_size": len(prompts), "batch_calls": calls}


def input_form(model: Any) -> str:
    """``chat`` when the logged input schema has a ``messages`` column, else ``prompt``."""
    schema = model.metadata.get_input_schema()
    return "chat" if schema is not None and "messages" in schema.input_names() else "prompt"


def chat_reply(reply: Any) -> tuple[str, int]:
    """The text and ``usage.completion_tokens`` of an OpenAI chat.completion (or a one-element list of them)."""
    if isinstance(reply, list):
        (reply,) = reply
    return reply["choices"][0]["message"]["content"], int(reply["usage"]["completion_tokens"])


def prompt_reply(reply: Any) -> str:
    """The one string of a prompt-form reply (a list, Series or array of strings)."""
    (text,) = list(reply)
    return text


def chat_request(prompt: dict[str, Any], max_new_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt["content"]}], "max_tokens": max_new_tokens, **extra}


def pyfunc_caller(model: Any, form: str, max_new_tokens: int, extra: dict[str, Any]) -> Callable[[dict], dict]:
    """A function that sends one prompt to the loaded pyfunc ``model`` in ``form`` and returns its record."""
    import pandas as pd

    def call_chat(prompt: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        text, tokens = chat_reply(model.predict(chat_request(prompt, max_new_tokens, extra)))
        return request_record(time.perf_counter() - started, text, tokens, "usage.completion_tokens")

    def call_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        frame = pd.DataFrame({"prompt": [prompt["templated"]]})
        reply = model.predict(frame, params={"max_new_tokens": max_new_tokens})
        return request_record(time.perf_counter() - started, prompt_reply(reply), None, None)

    return {"chat": call_chat, "prompt": call_prompt}[form]


def stream_first_token(model: Any, form: str, prompts: list[dict], max_new_tokens: int, extra: dict) -> dict:
    """Time to the first chunk of ``predict_stream``, per prompt after one warm-up; or why there is none."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    def one(prompt: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        if form == "chat":
            stream = model.predict_stream(chat_request(prompt, max_new_tokens, extra))
        else:
            frame = pd.DataFrame({"prompt": [prompt["templated"]]})
            stream = model.predict_stream(frame, params={"max_new_tokens": max_new_tokens})
        first, chunks = None, 0
        for _ in stream:
            chunks += 1
            first = first if first is not None else time.perf_counter() - started
        return {"ttft_seconds": first, "seconds": time.perf_counter() - started, "chunks": chunks}

    try:
        one(prompts[0])
        return {"available": True, "requests": [one(p) for p in prompts]}
    except (MlflowException, *STREAM_ERRORS) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"available": False, "reason": f"predict_stream failed: {type(exc).__name__}: {reason}"}


def run_pyfunc(spec: dict[str, Any]) -> dict[str, Any]:
    """A logged model through ``mlflow.pyfunc.load_model``: one request per prompt, then ``predict_stream`` for TTFT."""
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(spec["model_uri"])
    load_seconds = time.perf_counter() - started
    form = input_form(model)
    extra = spec.get("chat_extra", {})
    call = pyfunc_caller(model, form, spec["max_new_tokens"], extra)
    prompts = spec["prompts"][: spec["timed_prompts"]]
    call(prompts[0])
    requests = [call(p) for p in prompts]
    stream = stream_first_token(model, form, prompts, spec["max_new_tokens"], extra)
    result = {"form": form, "load_seconds": load_seconds, "requests": requests, "stream": stream}
    if spec.get("paired_rounds"):
        # Read before the plain loop's model is loaded: the peak belongs to the pyfunc alone.
        result["peak_rss_mb"], result["peak_rss_source"] = peak_rss_mb()
        result["paired"] = paired(spec, bare_loop(spec["onnx_dir"], spec["max_new_tokens"]), call)
    return result


def run_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """The ONNX pyfunc in prompt form: each prompt in its own call, then all of them as rows of one call."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(spec["model_uri"])
    prompts = spec["prompts"][: spec["batch_size"]]
    params = {"max_new_tokens": spec["max_new_tokens"]}
    frame = pd.DataFrame({"prompt": [p["templated"] for p in prompts]})
    single = pyfunc_caller(model, "prompt", spec["max_new_tokens"], {})
    single(prompts[0])
    batch1 = [single(p) for p in prompts]
    model.predict(frame, params=params)
    calls = []
    for _ in range(spec["batch_repeats"]):
        started = time.perf_counter()
        texts = list(model.predict(frame, params=params))
        calls.append({"seconds": time.perf_counter() - started, "texts": texts})
    return {"form": "prompt", "batch_size": len(prompts), "batch1": batch1, "batch_calls": calls}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bare": run_bare,
    "bare_batch": run_bare_batch,
    "pyfunc": run_pyfunc,
    "transformers": run_pyfunc,
    "batch": run_batch,
}


def run_spec(workers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """A worker process's body: read the spec file (argv 1), run its worker, write the result file (argv 2)."""
    spec_path, result_path = map(Path, sys.argv[1:3])
    spec = json.loads(spec_path.read_text())
    result = workers[spec["worker"]](spec)
    if "peak_rss_mb" not in result:
        result["peak_rss_mb"], result["peak_rss_source"] = peak_rss_mb()
    result_path.write_text(json.dumps(result))


def main() -> None:
    run_spec(WORKERS)


if __name__ == "__main__":
    main()
