"""The endpoint's Prometheus metrics (``prometheus_client``), in a registry of the app's own.

Names follow vLLM's where one fits (``*_time_to_first_token_seconds`` ...), under the prefix ``llmflow_``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Requests by status; running and waiting gauges; token counters; TTFT, inter-token and end-to-end histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmflow_requests", "Chat requests answered, by HTTP status.", ["status"], registry=r)
        self.running = Gauge("llmflow_requests_running", "Requests generating now.", registry=r)
        self.waiting = Gauge("llmflow_requests_waiting", "Requests queued for a place.", registry=r)
        self.prompt_tokens = Counter("llmflow_prompt_tokens", "Prompt tokens of requests that ran.", registry=r)
        self.generation_tokens = Counter("llmflow_generation_tokens", "Tokens generated.", registry=r)

        def seconds(name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(f"llmflow_{name}_seconds", doc, buckets=buckets, registry=r)

        self.ttft = seconds("time_to_first_token", "From the request's arrival to its first generated token.")
        self.inter_token = seconds("inter_token_latency", "Between two generated tokens.", TOKEN_BUCKETS)
        self.e2e = seconds("e2e_request_latency", "From the request's arrival to its last token.")
        self.model_switches = Counter(
            "llmflow_model_switches", "Times the served version changed (the alias moved).", registry=r
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)
