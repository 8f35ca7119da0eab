"""Prometheus metrics of one server, in its own registry (``GET /metrics``).

Example:
    >>> metrics = Metrics(lambda: {"running": 2, "waiting": 0}, lambda: 3)
    >>> metrics.requests.labels("completions", "200").inc()
    >>> b'softprompt_requests_total{endpoint="completions",status="200"} 1.0' in metrics.render()
    True
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a few milliseconds (a 429, a tiny model's token) to minutes (long completions).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Counters of requests and tokens, latency histograms, and the engine's load at scrape time."""

    def __init__(self, load: Callable[[], dict[str, int]], task_count: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "softprompt_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "softprompt_request_seconds",
            "Time to the whole answer",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "softprompt_time_to_first_token_seconds",
            "Time to the first generated token",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("softprompt_prompt_tokens", "Prompt tokens read", registry=self.registry)
        self.generated_tokens = Counter(
            "softprompt_generation_tokens", "Tokens generated", registry=self.registry
        )
        running = Gauge("softprompt_running_sequences", "Sequences being decoded", registry=self.registry)
        running.set_function(lambda: load()["running"])
        waiting = Gauge("softprompt_waiting_requests", "Requests waiting to start", registry=self.registry)
        waiting.set_function(lambda: load()["waiting"])
        Gauge("softprompt_tasks", "Tasks served", registry=self.registry).set_function(task_count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
