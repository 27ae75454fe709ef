"""onnxruntime-genai's ``og.Engine`` against the endpoint's batching scheduler, in one run: ``python -m bench.engine``.

Issue 22 asks whether the endpoint's scheduler should move onto ``og.Engine`` (continuous batching, prefix caching,
cancellation); it should if, side by side in one run, the Engine beats today's scheduler at 1, 4 and 16 clients while
keeping the endpoint's checks (answers equal to the answer alone, stop strings, seeds, the 429/503 limits).

In a temporary folder it exports the real chat model of ``--model`` (SmolLM2-135M-Instruct, ``make smollm2``) to int4
for CPU with the project's default (``llmflow.export_onnx.run_builder``), then, in this one process:

- **settings**: for each ``engine.dynamic_batching`` setting of ``DYNAMIC_SETTINGS`` (prefix caching on and off,
  ``max_batch_size`` 16), a copy of the folder whose ``genai_config.json`` carries it, and whether ``og.Engine``
  accepts it (its error if not); and whether the builder exports the paged-attention model that dynamic batching
  needs for CPU (``use_paged_attention=true``). The Engine measured is the first accepted dynamic setting, else the
  plain (static) Engine.
- **scheduler**: the project's ``BatchScheduler`` over the project's ONNX pyfunc python model (``OnnxChatModel``), as
  ``llmflow.serving.openai_server`` builds it (``--max-concurrent``, ``--max-queue``), fed as the endpoint feeds it:
  the request body through ``openai_protocol.read_call``, ``prepare`` in a worker thread, a ``Job`` submitted, its
  text read from the job's queue on the event loop.
- **og.Engine**: ``EngineServer``, the same jobs (the same rows: the pyfunc's prompt ids, budget, stop scanner) driven
  by one thread that owns an ``og.Engine``: each job a ``Request`` with one turn (``set_max_generated_tokens``, the
  session capped at prompt plus budget), its tokens pushed through the row as the scheduler's are.

For each client count, that many clients at once each send ``--requests`` streamed greedy chat requests in turn, first
to one engine, then to the other (the order alternates by client count), each round after a quiet CPU
(``bench.machine.measure_quietly``, which records other processes' CPU). Figures per engine and client count:
aggregate generated tokens/s (all tokens over the round's wall time), TTFT p50/p99 (from the client's call, before
``prepare``, to the first text), and whether every answer equals what the same prompt gets alone from the same
engine (greedy). Then the checks: stop strings (native ``TurnOptions.set_stop_strings``, and the project's scanner
with ``Request.cancel_turn``), per-request seeds, a full queue (429). Prints a table, writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.machine import OtherLoad, measure_quietly, parse_run_options, write_json
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_MODEL = PROJECT_ROOT / "build" / "smollm2-135m-instruct"
DEFAULT_OUT = Path("bench-results/engine.json")
QA_PATH = PROJECT_ROOT / "data" / "qa.jsonl"
# Appended to every question (none by default: the questions as they are).
DEFAULT_SUFFIX = ""
SCHEDULER, ENGINE = "scheduler", "og.Engine"
ENGINES = (SCHEDULER, ENGINE)
STATIC = "static (no engine section)"
# engine.dynamic_batching settings written into a copy of genai_config.json (og 0.18 reads these keys).
DYNAMIC_SETTINGS: dict[str, dict[str, Any]] = {
    "dynamic, prefix caching on": {
        "max_batch_size": 16,
        "prefix_caching": True,
        "block_size": 16,
        "num_blocks": 1024,
        "max_scheduled_tokens": 2048,
    },
    "dynamic, prefix caching off": {
        "max_batch_size": 16,
        "prefix_caching": False,
        "block_size": 16,
        "num_blocks": 1024,
        "max_scheduled_tokens": 2048,
    },
    "dynamic, the builder's own form": {"max_batch_size": 16, "block_size": 256, "num_blocks": 64},
}
SEED_REQUEST = {"temperature": 0.8, "top_p": 0.95, "seed": 7}


# ---------------------------------------------------------------------------------------------------------- settings
def engine_config(base: dict[str, Any], dynamic: dict[str, Any] | None) -> dict[str, Any]:
    """``genai_config.json`` with ``engine.dynamic_batching`` set to ``dynamic`` (``None``: no ``engine`` section).

    ``base`` is not changed; the rest of the config is kept as it is.
    """
    config = copy.deepcopy(base)
    config.pop("engine", None)
    if dynamic is not None:
        config["engine"] = {"dynamic_batching": dict(dynamic)}
    return config


def config_variant(onnx_dir: Path, out_dir: Path, dynamic: dict[str, Any] | None) -> Path:
    """A copy of ``onnx_dir`` at ``out_dir``: its files linked, its ``genai_config.json`` edited (``engine_config``)."""
    out_dir.mkdir(parents=True)
    for item in onnx_dir.iterdir():
        if item.name != "genai_config.json":
            (out_dir / item.name).symlink_to(item.resolve())
    base = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
    (out_dir / "genai_config.json").write_text(json.dumps(engine_config(base, dynamic), indent=4), encoding="utf-8")
    return out_dir


def probe_engine(folder: Path) -> dict[str, Any]:
    """Whether ``og.Engine`` accepts the model folder, and its capabilities; or the error it raised."""
    import onnxruntime_genai as og

    try:
        engine = og.Engine(og.Model(str(folder)))
        caps = engine.get_capabilities()
    except Exception as error:  # what the CPU build says about these settings is the finding
        return {"accepted": False, "error": f"{type(error).__name__}: {error}"}
    return {
        "accepted": True,
        "configured_max_batch_size": caps.configured_max_batch_size,
        "max_request_length": caps.max_request_length,
        "max_scheduled_tokens": caps.max_scheduled_tokens,
    }


def probe_paged_export(model_dir: Path, work: Path) -> str:
    """What the builder does with ``use_paged_attention=true`` for int4 on CPU (dynamic batching needs paged KV)."""
    from onnxruntime_genai.models import builder

    args = (None, str(model_dir), str(work / "paged"), "int4", "cpu", str(work / "paged-cache"))
    try:
        builder.create_model(*args, **builder.parse_extra_options(*args, ["use_paged_attention=true"]))
    except Exception as error:  # the refusal is the finding
        return f"refused: {type(error).__name__}: {error}"
    return "exported"


# ------------------------------------------------------------------------------------------------------ og.Engine side
class EngineServer:
    """The scheduler's interface (``submit``, ``close``) over one ``og.Engine`` owned by one thread.

    Jobs wait in a deque (``max_waiting``: ``QueueFull``, the 429) until fewer than ``max_running`` are in the Engine;
    each then becomes a ``Request`` with one turn. Each token goes through the job's row (text, stop scanner, budget),
    as in the scheduler; a row that a stop string ended, or a cancelled job, has its turn cancelled
    (``Request.cancel_turn``). ``native_stops`` hands the row's stop strings to ``TurnOptions.set_stop_strings``
    instead. A turn the Engine refuses (``begin_turn`` raises) ends its job with ``("error", message)``.
    """

    def __init__(
        self, folder: Path, eos: frozenset[int], max_running: int, max_waiting: int, native_stops: bool = False
    ) -> None:
        self.folder, self.eos, self.native_stops = folder, eos, native_stops
        self.max_running, self.max_waiting = max_running, max_waiting
        self.waiting: deque[Any] = deque()
        self.closed = False
        self.condition = threading.Condition()
        self.steps: list[int] = []  # tokens per Engine.run call: how many rows each step ran
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="og-engine", daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.failure is not None:
            raise RuntimeError(f"og.Engine did not start: {self.failure}") from self.failure

    def submit(self, job: Any) -> None:
        from llmflow.serving.scheduler import Closed, QueueFull

        with self.condition:
            if self.closed:
                raise Closed("closed")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_waiting})")
            self.waiting.append(job)
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.thread.join()

    def _begin(self, engine: Any, job: Any) -> tuple[Any, int] | None:
        import numpy as np
        import onnxruntime_genai as og

        row = job.row
        settings = row.request.settings
        options = og.RequestOptions()
        options.set_max_session_tokens(len(row.ids) + row.budget)
        request = engine.create_request(options=options)
        turn = og.TurnOptions(request)
        turn.set_max_generated_tokens(row.budget)
        turn.set_do_sample(settings.temperature > 0)
        try:
            if settings.temperature > 0:
                turn.set_temperature(settings.temperature)
                turn.set_top_p(settings.top_p)
                turn.set_top_k(settings.top_k)
                if settings.seed is not None:
                    turn.set_seed(settings.seed)
            if self.native_stops and settings.stop:
                turn.set_stop_strings(list(settings.stop))
            turn_id = request.begin_turn(np.asarray(row.ids, dtype=np.int32), turn)
        except RuntimeError as error:
            request.close()
            job.send("error", str(error))
            return None
        return request, turn_id

    def _work(self) -> None:
        import onnxruntime_genai as og

        try:
            engine = og.Engine(og.Model(str(self.folder)))
            buffer = engine.create_event_buffer(256)
        except Exception as error:  # reported by __init__
            self.failure = error
            self.ready.set()
            return
        self.ready.set()
        running: dict[int, tuple[Any, Any, int]] = {}  # id(request) -> (job, request, turn id)
        finished = og.EngineEventFlags.TURN_FINISHED.value
        failed = og.EngineEventFlags.FAILED.value
        while True:
            with self.condition:
                while not self.waiting and not running and not self.closed:
                    self.condition.wait()
                if self.closed and not self.waiting and not running:
                    return
                while self.waiting and len(running) < self.max_running:
                    job = self.waiting.popleft()
                    if job.cancelled:
                        continue
                    if (begun := self._begin(engine, job)) is not None:
                        running[id(begun[0])] = (job, *begun)
            for job, request, turn_id in running.values():
                if job.row.finish_reason is not None:  # a stop string, or a client that left
                    request.cancel_turn(turn_id)
            if not running:
                continue
            events = engine.run(buffer)
            self.steps.append(sum(1 for i in range(len(events)) if events[i].token is not None))
            for i in range(len(events)):
                event = events[i]
                job, request, turn_id = running[id(event.request)]
                row = job.row
                if event.token is not None and row.finish_reason is None:
                    self._text(job, row.push(int(event.token), self.eos))
                flags = event.flags.value
                if flags & failed:
                    job.send("error", f"og.Engine failed the turn: {event.error_code.name}")
                elif flags & finished:
                    if row.finish_reason is None:
                        reason = event.finish_reason
                        if reason == og.FinishReason.EOS:
                            self._text(job, row.push(next(iter(self.eos)), self.eos))
                        elif reason == og.FinishReason.STOP_STRING:
                            row.finish_reason = "stop"
                        else:
                            self._text(job, row.close())
                    job.send("done")
                if flags & (finished | failed):
                    del running[id(event.request)]
                    request.close()

    @staticmethod
    def _text(job: Any, text: str) -> None:
        if text:
            now = time.perf_counter()
            job.first_token = job.first_token or now
            job.send("text", text)


# --------------------------------------------------------------------------------------------------------- requests
def chat_body(content: str, max_tokens: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body a client sends: one user message, streamed, greedy unless ``extra`` says otherwise."""
    return {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **(extra or {}),
    }


async def one_request(python_model: Any, submit: Callable[[Any], None], body: dict[str, Any]) -> dict[str, Any]:
    """One request as the endpoint runs it (``read_call``, ``prepare`` in a thread, a ``Job``, its events); its record.

    TTFT runs from the call (before ``prepare``) to the first text; ``error`` is the job's error message, if any.
    """
    from llmflow.serving import openai_protocol
    from llmflow.serving.scheduler import Job

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    call = openai_protocol.read_call(body)
    [row] = await loop.run_in_executor(None, python_model.prepare, call.request, None)
    job = Job(row, loop)
    submit(job)
    first, error = None, None
    while True:
        kind, value = await job.events.get()
        if kind == "text":
            first = first if first is not None else time.perf_counter() - started
        elif kind == "error":
            error = value
            break
        elif kind == "done":
            break
    return {
        "ttft": first,
        "seconds": time.perf_counter() - started,
        "tokens": row.completion_tokens,
        "text": row.text,
        "finish_reason": row.finish_reason,
        "error": error,
    }


def client_prompts(client: int, requests: int, prompts: int) -> list[int]:
    """The prompt indexes client ``client`` sends in turn (as ``bench.concurrency``: ``(client*requests+i) % n``)."""
    return [(client * requests + i) % prompts for i in range(requests)]


async def run_clients(
    python_model: Any, submit: Callable[[Any], None], contents: list[str], clients: int, requests: int, max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """``clients`` clients at once, each sending ``requests`` requests in turn; the records and the wall seconds."""

    async def client(number: int) -> list[dict[str, Any]]:
        records = []
        for index in client_prompts(number, requests, len(contents)):
            record = await one_request(python_model, submit, chat_body(contents[index], max_tokens))
            records.append({**record, "prompt_index": index})
        return records

    started = time.perf_counter()
    batches = await asyncio.gather(*(client(n) for n in range(clients)))
    return [r for batch in batches for r in batch], time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------- figures
def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of ``values`` (``share`` 0.5: the median, 0.99: p99), as ``bench.concurrency``."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def round_figures(records: list[dict[str, Any]], wall: float, alone: dict[int, str]) -> dict[str, Any]:
    """A round's figures: aggregate tokens/s (all tokens over ``wall``), TTFT p50/p99 in ms, and how many answers
    equal the answer alone (``alone``: prompt index -> text). A request that failed or gave no text counts as unequal
    and has no TTFT."""
    if wall <= 0 or not records:
        raise ValueError(f"a round needs records and a positive wall time; got {len(records)} records, {wall} s")
    ttfts = [r["ttft"] for r in records if r["ttft"] is not None and r.get("error") is None]
    equal = sum(r.get("error") is None and r["text"] == alone.get(r["prompt_index"]) for r in records)
    tokens = sum(r["tokens"] for r in records)
    return {
        "requests": len(records),
        "tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_second": tokens / wall,
        "ttft_p50_ms": percentile(ttfts, 0.5) * 1000 if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 0.99) * 1000 if ttfts else None,
        "alone_equal": f"{equal}/{len(records)}",
        "all_alone_equal": equal == len(records),
        "errors": sorted({r["error"] for r in records if r.get("error")}),
    }


def rows_summary(sizes: list[int]) -> dict[str, Any]:
    """How many rows ran together: the scheduler's batch sizes, or og.Engine's tokens per ``run`` call (one a row)."""
    running = [n for n in sizes if n > 0]
    return {
        "max": max(running, default=0),
        "mean": statistics.fmean(running) if running else 0.0,
        "count": len(running),
    }


def counting_scheduler(base: type) -> type:
    """``base`` (``BatchScheduler``) that also records each batch's size in ``steps``; it schedules as ``base`` does."""

    class CountingScheduler(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.steps: list[int] = []  # set before the base class starts the thread that appends to it
            super().__init__(*args, **kwargs)

        def _take(self, batches: int) -> Any:
            batch = super()._take(batches)
            if batch:
                self.steps.append(len(batch))
            return batch

    return CountingScheduler


def stop_string_for(text: str) -> str | None:
    """A stop string for the stop check: a word from the second half of ``text`` (the greedy answer alone), so the
    answer stopped at it is a strict, non-empty prefix; ``None`` when the answer has no such word."""
    words = text.split()
    for word in words[len(words) // 2 :]:
        if len(word) >= 4 and text.find(word) > 0:
            return word
    return None


def stop_result(record: dict[str, Any], alone_text: str, stop: str) -> dict[str, Any]:
    """Whether a request with ``stop`` gave the alone answer cut before the stop string, finishing with ``stop``."""
    expected = alone_text[: alone_text.find(stop)]
    kept = record.get("error") is None and record["text"] == expected and record["finish_reason"] == "stop"
    return {"kept": kept, "text": record["text"], "expected": expected, "error": record.get("error")}


def decision(rounds: dict[str, dict[str, dict[str, Any]]], checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether og.Engine beats the scheduler: more tokens/s and a TTFT p50 no longer, at every client count, with every
    check kept (answers equal alone in every round, stop strings, seeds, the 429). Lists the reasons it does not."""
    reasons = []
    for clients, pair in rounds.items():
        engine, scheduler = pair[ENGINE], pair[SCHEDULER]
        if engine["tokens_per_second"] <= scheduler["tokens_per_second"]:
            reasons.append(
                f"{clients} clients: {engine['tokens_per_second']:.1f} tokens/s against the scheduler's "
                f"{scheduler['tokens_per_second']:.1f}"
            )
        if (engine["ttft_p50_ms"] or float("inf")) > (scheduler["ttft_p50_ms"] or float("inf")):
            reasons.append(
                f"{clients} clients: TTFT p50 {engine['ttft_p50_ms']:.0f} ms against the scheduler's "
                f"{scheduler['ttft_p50_ms']:.0f} ms"
            )
        if not engine["all_alone_equal"]:
            reasons.append(f"{clients} clients: answers equal to alone {engine['alone_equal']}")
    for name, check in checks.get(ENGINE, {}).items():
        if not check["kept"]:
            reasons.append(f"{name}: not kept ({check.get('error') or check.get('note') or 'differs'})")
    return {"engine_beats_scheduler": not reasons, "reasons": reasons}


def format_table(result: dict[str, Any]) -> str:
    """The Markdown table: per client count and engine, tokens/s, TTFT p50/p99, answers equal alone, the rows that
    ran together (max and mean), other processes' CPU."""
    lines = [
        "| clients | engine | tokens/s (aggregate) | TTFT p50 | TTFT p99 | answers = alone | rows together "
        "(max, mean) | other CPU (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients, pair in result["rounds"].items():
        for name in ENGINES:
            r = pair[name]
            p50 = "n/a" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.0f} ms"
            p99 = "n/a" if r["ttft_p99_ms"] is None else f"{r['ttft_p99_ms']:.0f} ms"
            rows = r.get("rows_per_batch") or r.get("rows_per_step") or {"max": 0, "mean": 0.0}
            lines.append(
                f"| {clients} | {name} | {r['tokens_per_second']:.1f} | {p50} | {p99} | {r['alone_equal']} | "
                f"{rows['max']}, {rows['mean']:.1f} | {r['other_cpu_cores']:.2f} |"
            )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------- run
def load_contents(count: int, suffix: str) -> list[str]:
    """The first ``count`` questions of ``data/qa.jsonl``, each with ``suffix``."""
    from llmflow.evaluation.qa import load_qa

    return [pair.question + suffix for pair in load_qa(QA_PATH)[:count]]


def queue_limit_check(make: Callable[[int, int], Any], python_model: Any, content: str) -> dict[str, Any]:
    """A backend with one running and one waiting place, sent three jobs at once: does one get ``QueueFull`` (429)?"""
    from llmflow.serving import openai_protocol
    from llmflow.serving.scheduler import Job, QueueFull

    backend = make(1, 1)
    loop = asyncio.new_event_loop()
    jobs, refused = [], 0
    try:
        for _ in range(3):
            [row] = python_model.prepare(openai_protocol.read_call(chat_body(content, 8)).request, None)
            job = Job(row, loop)
            try:
                backend.submit(job)
                jobs.append(job)
            except QueueFull:
                refused += 1
        for job in jobs:
            job.cancel()
    finally:
        backend.close()
        loop.close()
    return {"kept": refused >= 1, "refused": refused, "of": 3}


def run(
    model_dir: Path,
    clients: list[int],
    requests: int,
    max_new_tokens: int,
    prompts: int,
    suffix: str,
    max_concurrent: int,
    max_queue: int,
    quiet_wait_s: float,
    busy_retries: int,
    out: Path,
) -> dict[str, Any]:
    from mlflow.pyfunc import PythonModelContext

    from llmflow.chat_model.onnx_chat_model import OnnxChatModel
    from llmflow.export_onnx import ExportSettings, run_builder
    from llmflow.serving.metrics import Metrics
    from llmflow.serving.scheduler import BatchScheduler

    started, load_start = time.perf_counter(), os.getloadavg()
    contents = load_contents(prompts, suffix)
    with tempfile.TemporaryDirectory(prefix="llmflow-engine-") as tmp_name:
        tmp = Path(tmp_name)
        step = time.perf_counter()
        onnx_dir = run_builder(model_dir, tmp / "onnx", ExportSettings(precision="int4"))
        export_seconds = time.perf_counter() - step
        settings: dict[str, dict[str, Any]] = {}
        for number, (name, dynamic) in enumerate([(STATIC, None), *DYNAMIC_SETTINGS.items()]):
            folder = config_variant(onnx_dir, tmp / f"variant-{number}", dynamic)
            settings[name] = {"engine.dynamic_batching": dynamic, "folder": folder, **probe_engine(folder)}
            logger.info("og.Engine with %s: %s", name, settings[name].get("error", "accepted"))
        paged = probe_paged_export(model_dir, tmp)
        chosen = next((n for n in DYNAMIC_SETTINGS if settings[n]["accepted"]), STATIC)
        engine_folder = settings[chosen]["folder"]

        # The pyfunc python model as the endpoint's holder hands it to the scheduler (model.unwrap_python_model()).
        python_model = OnnxChatModel()
        config = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": 50, "model_name": "b"}
        python_model.load_context(PythonModelContext(artifacts={"onnx": str(onnx_dir)}, model_config=config))
        eos = python_model.eos

        def make(name: str, running: int, waiting: int, native_stops: bool = False) -> Any:
            if name == SCHEDULER:
                return counting_scheduler(BatchScheduler)(python_model, running, waiting, Metrics(), "bench")
            return EngineServer(engine_folder, eos, running, waiting, native_stops)

        backends = {name: make(name, max_concurrent, max_queue) for name in ENGINES}
        loop = asyncio.new_event_loop()

        def clients_round(name: str, count: int, per_client: int) -> tuple[list[dict[str, Any]], float]:
            submit = backends[name].submit
            return loop.run_until_complete(
                run_clients(python_model, submit, contents, count, per_client, max_new_tokens)
            )

        try:
            for name in ENGINES:  # warm-up
                clients_round(name, 1, 1)
            alone: dict[str, dict[int, str]] = {}
            for name in ENGINES:
                alone[name] = {}
                for index, content in enumerate(contents):
                    body = chat_body(content, max_new_tokens)
                    record = loop.run_until_complete(one_request(python_model, backends[name].submit, body))
                    alone[name][index] = record["text"]
            rounds: dict[str, dict[str, dict[str, Any]]] = {}
            for turn, count in enumerate(clients):
                order = ENGINES if turn % 2 == 0 else ENGINES[::-1]
                rounds[str(count)] = {}
                for name in order:

                    def once(name: str = name, count: int = count) -> dict[str, Any]:
                        sizes = backends[name].steps
                        before, meter = len(sizes), OtherLoad()
                        records, wall = clients_round(name, count, requests)
                        figures = round_figures(records, wall, alone[name])
                        rows = {"rows_per_" + ("batch" if name == SCHEDULER else "step"): rows_summary(sizes[before:])}
                        return {**figures, **rows, "other_cpu_cores": meter.cores(), "records": records}

                    measured = measure_quietly(f"{name} x{count}", once, quiet_wait_s, busy_retries)
                    records = measured.pop("records")
                    scheduler_alone = alone[SCHEDULER]
                    measured["same_as_scheduler_alone"] = (
                        f"{sum(r['text'] == scheduler_alone[r['prompt_index']] for r in records)}/{len(records)}"
                    )
                    measured["finish_reasons"] = dict(
                        sorted(
                            {
                                reason: sum(r["finish_reason"] == reason for r in records)
                                for reason in {r["finish_reason"] for r in records}
                            }.items(),
                            key=lambda kv: str(kv[0]),
                        )
                    )
                    rounds[str(count)][name] = measured
                    logger.info(
                        "%s, %d clients: %.1f tokens/s, TTFT p50 %s ms, alone-equal %s",
                        name,
                        count,
                        measured["tokens_per_second"],
                        measured["ttft_p50_ms"],
                        measured["alone_equal"],
                    )
            engine_steps = list(backends[ENGINE].steps)

            # Checks, each request alone.
            def ask(backend: Any, extra: dict[str, Any]) -> dict[str, Any]:
                body = chat_body(contents[0], max_new_tokens, extra)
                return loop.run_until_complete(one_request(python_model, backend.submit, body))

            stop = stop_string_for(alone[SCHEDULER][0])
            checks: dict[str, dict[str, Any]] = {name: {} for name in ENGINES}
            if stop is not None:
                for name in ENGINES:
                    checks[name]["stop strings"] = {
                        "stop": stop,
                        **stop_result(ask(backends[name], {"stop": [stop]}), alone[name][0], stop),
                    }
                native = make(ENGINE, 1, 4, native_stops=True)
                try:
                    result = stop_result(ask(native, {"stop": [stop]}), alone[ENGINE][0], stop)
                finally:
                    native.close()
                checks[ENGINE]["stop strings"]["native (TurnOptions.set_stop_strings)"] = result
                checks[ENGINE]["stop strings"]["how"] = "the project's StopScanner on each token, then cancel_turn"
            for name in ENGINES:
                first, second = ask(backends[name], SEED_REQUEST), ask(backends[name], SEED_REQUEST)
                error = first["error"] or second["error"]
                checks[name]["seeds"] = {
                    "kept": error is None and first["text"] == second["text"],
                    "error": error,
                    "request": SEED_REQUEST,
                }
            for name in ENGINES:
                checks[name]["429 (queue full)"] = queue_limit_check(
                    lambda running, waiting, name=name: make(name, running, waiting), python_model, contents[0]
                )
        finally:
            for backend in backends.values():
                backend.close()
            loop.close()
    limits = (
        "503 comes from the model holder while the model loads, whatever generates. og.Engine has no bound on and no "
        "view of waiting requests (only has_pending_requests), so the 429 needs the scheduler's own deque and "
        "max_waiting in front of it, and max_running to decide how many turns are begun in the Engine (as "
        "EngineServer here); a turn begun in the static Engine waits there, unseen, for one of its batch places."
    )
    result = {
        "model": {"path": str(model_dir), "export": "int4 for CPU, the project's default (run_builder)"},
        "settings": {
            "clients": clients,
            "requests_per_client": requests,
            "max_new_tokens": max_new_tokens,
            "prompts": len(contents),
            "suffix": suffix,
            "greedy": True,
            "max_concurrent": max_concurrent,
            "max_queue": max_queue,
            "engine_session_tokens": "prompt + max_tokens (RequestOptions.set_max_session_tokens)",
        },
        "engine_settings": {name: {k: v for k, v in s.items() if k != "folder"} for name, s in settings.items()},
        "paged_attention_export_for_cpu": paged,
        "engine_measured_with": chosen,
        "engine_rows_per_step": {
            **rows_summary(engine_steps),
            "histogram": {str(n): engine_steps.count(n) for n in sorted(set(engine_steps)) if n > 0},
        },
        "rounds": rounds,
        "checks": checks,
        "limits_429_503": limits,
        "decision": decision(rounds, checks),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "versions": {n: version(n) for n in ("onnxruntime-genai", "onnxruntime")},
        },
        "export_seconds": export_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    return write_json(out, result)


def main() -> None:
    from llmflow.serving.openai_server import DEFAULT_MAX_CONCURRENT

    parser = argparse.ArgumentParser(description="og.Engine against the endpoint's batching scheduler, in one run.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="The float HF folder (make smollm2).")
    parser.add_argument("--clients", type=str, default="1,4,16", help="Client counts, comma-separated.")
    parser.add_argument("--requests", type=int, default=4, help="Requests each client sends in turn.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="max_tokens of every request (greedy).")
    parser.add_argument("--prompts", type=int, default=16, help="Distinct questions of data/qa.jsonl (each alone too).")
    parser.add_argument("--suffix", type=str, default=DEFAULT_SUFFIX, help="Text appended to every question.")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help="Rows running at once, both engines (the server's --max-concurrent default here).",
    )
    parser.add_argument("--max-queue", type=int, default=64, help="Waiting requests before 429 (the server's).")
    args = parse_run_options(parser, DEFAULT_OUT, busy_retries=1)
    clients = [int(c) for c in args.clients.split(",")]
    result = run(
        args.model,
        clients,
        args.requests,
        args.max_new_tokens,
        args.prompts,
        args.suffix,
        args.max_concurrent,
        args.max_queue,
        args.quiet_wait,
        args.busy_retries,
        args.out,
    )
    print(
        f"\n{args.model.name} int4/CPU, {result['settings']['prompts']} questions, max_tokens {args.max_new_tokens}, "
        f"greedy, streamed; --max-concurrent {args.max_concurrent}; og.Engine: {result['engine_measured_with']}"
    )
    for name, s in result["engine_settings"].items():
        print(f"  og.Engine with {name}: {'accepted' if s['accepted'] else s['error']}")
    print(f"  paged-attention export for CPU: {result['paged_attention_export_for_cpu']}")
    print(f"  og.Engine rows per step: {result['engine_rows_per_step']}")
    print(format_table(result))
    for name, checks in result["checks"].items():
        print(f"{name}: " + ", ".join(f"{check} {'kept' if c['kept'] else 'NOT kept'}" for check, c in checks.items()))
    print(f"decision: {result['decision']}")
    busy = {f"{c} {n}": round(r["other_cpu_cores"], 2) for c, p in result["rounds"].items() for n, r in p.items()}
    if any(v >= 0.2 for v in busy.values()):
        print(f"WARNING: other processes used CPU (cores) during {busy}: those figures are slowed by them")
    print(f"results: {args.out}  (wall {result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
