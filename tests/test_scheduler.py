"""The endpoint's scheduler (llmflow/serving/scheduler.py) over a stand-in model whose rows take a set number of steps.

The real model's batched answers are checked in the pyfunc's and the endpoint's tests; here, only what the scheduler
decides: when a job starts, beside which batch, and when it is answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from llmflow.serving.metrics import Metrics
from llmflow.serving.scheduler import BatchScheduler, Job

STEP_S = 0.01


@dataclass
class Row:
    """As much of the pyfunc's row as the scheduler reads; ``budget`` is also the steps this row takes."""

    budget: int
    ids: list[int] = field(default_factory=lambda: [1, 2, 3])
    finish_reason: str | None = None
    completion_tokens: int = 0
    request: Any = field(default_factory=lambda: SimpleNamespace(settings=SimpleNamespace(sampling_key="greedy")))


class StepModel:
    """Each step takes ``STEP_S`` and gives each open row one piece of text; a row ends after ``budget`` steps.
    Records the rows of each batch it starts, and the most batches and rows open at any step."""

    context_length = 1000

    def __init__(self, fail_on_budget: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.live: dict[int, list[Row]] = {}
        self.open = 0
        self.most_open = 0
        self.most_rows = 0
        self.fail_on_budget = fail_on_budget
        self.lock = threading.Lock()

    def generate_steps(self, rows: list[Row]) -> Iterator[list[tuple[int, str]]]:
        self.batches.append([row.budget for row in rows])
        self.live[id(rows)] = rows
        self.open += 1
        try:
            while any(row.finish_reason is None for row in rows):
                if self.fail_on_budget in [row.budget for row in rows]:
                    raise RuntimeError("the generator failed")
                self.most_open = max(self.most_open, self.open)
                generating = sum(row.finish_reason is None for live in list(self.live.values()) for row in live)
                self.most_rows = max(self.most_rows, generating)
                time.sleep(STEP_S)
                texts = []
                for index, row in enumerate(rows):
                    if row.finish_reason is None:
                        row.completion_tokens += 1
                        texts.append((index, f"<{row.budget}>"))
                        if row.completion_tokens >= row.budget:
                            row.finish_reason = "length"
                yield texts
            yield []
        finally:
            self.open -= 1
            self.live.pop(id(rows))


async def _answers(
    model: StepModel, plan: list[tuple[float, int]], max_running: int = 4, max_batches: int = 2
) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """Submit a job of ``budget`` steps at each ``(delay, budget)``; return the budgets in the order their jobs were
    answered, and each job's last event and text."""
    loop = asyncio.get_running_loop()
    scheduler = BatchScheduler(model, max_running, 16, Metrics(), "test", max_batches)
    order: list[int] = []
    results: dict[int, tuple[str, str]] = {}

    async def one(delay: float, budget: int) -> None:
        await asyncio.sleep(delay)
        job = Job(Row(budget), loop)
        scheduler.submit(job)
        text = ""
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                text += value
            else:
                order.append(budget)
                results[budget] = (kind, text)
                return

    await asyncio.gather(*(one(delay, budget) for delay, budget in plan))
    scheduler.close()
    scheduler.thread.join(timeout=5)
    assert not scheduler.thread.is_alive()
    assert scheduler.running == 0 and not scheduler.busy()
    return order, results


def test_a_job_that_arrives_during_a_long_batch_starts_beside_it_and_ends_first():
    model = StepModel()
    order, results = asyncio.run(_answers(model, [(0.0, 60), (0.1, 3)]))
    assert model.batches == [[60], [3]]
    assert model.most_open == 2
    assert order == [3, 60]  # answered when its row ended, not when the long batch did
    assert results[3] == ("done", "<3>" * 3) and results[60] == ("done", "<60>" * 60)


def test_with_one_batch_at_a_time_a_job_waits_for_the_running_batch():
    model = StepModel()
    order, _ = asyncio.run(_answers(model, [(0.0, 60), (0.1, 3)], max_batches=1))
    assert model.batches == [[60], [3]]
    assert model.most_open == 1
    assert order == [60, 3]


def test_a_row_is_answered_when_it_ends_though_its_batch_goes_on():
    model = StepModel()
    order, _ = asyncio.run(_answers(model, [(0.0, 40), (0.0, 2)], max_batches=1))
    assert model.batches == [[40, 2]]  # waiting together, they start in one batch
    assert order == [2, 40]


def test_rows_generating_at_once_never_exceed_max_running_across_batches():
    model = StepModel()
    plan = [(0.0, 40), (0.0, 40), (0.05, 5), (0.05, 5), (0.05, 5)]
    order, _ = asyncio.run(_answers(model, plan, max_running=3, max_batches=2))
    # Two long rows take two of the three places: the short jobs run one at a time beside them.
    assert model.batches == [[40, 40], [5], [5], [5]]
    assert model.most_rows == 3
    assert order == [5, 5, 5, 40, 40]


def test_a_failed_batch_answers_its_jobs_with_an_error_and_the_other_batch_goes_on():
    model = StepModel(fail_on_budget=7)
    order, results = asyncio.run(_answers(model, [(0.0, 30), (0.05, 7)]))
    assert results[7] == ("error", "")
    assert results[30] == ("done", "<30>" * 30)
    assert order == [7, 30]


@pytest.mark.parametrize("max_batches", [1, 2])
def test_a_cancelled_job_stops_and_is_answered_within_a_step(max_batches: int):
    model = StepModel()

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        scheduler = BatchScheduler(model, 4, 16, Metrics(), "test", max_batches)
        job = Job(Row(500), loop)
        scheduler.submit(job)
        await job.events.get()  # its first text
        job.cancel()
        cancelled = time.perf_counter()
        while (await job.events.get())[0] != "done":
            pass
        scheduler.close()
        return time.perf_counter() - cancelled

    assert asyncio.run(scenario()) < 100 * STEP_S  # far less than the 500 steps the row would take
    assert model.open == 0  # the generator was closed


def test_a_model_that_cannot_start_a_batch_answers_an_error_and_the_thread_serves_the_next():
    class Unstartable(StepModel):
        def generate_steps(self, rows: list[Row]) -> Iterator[list[tuple[int, str]]]:
            if rows[0].budget == 7:  # raises when called, before any step: as a model without the method would
                raise AttributeError("no generate_steps")
            return super().generate_steps(rows)

    order, results = asyncio.run(_answers(Unstartable(), [(0.0, 7), (0.1, 4)]))
    assert results[7] == ("error", "")
    assert results[4] == ("done", "<4>" * 4)
    assert order == [7, 4]
