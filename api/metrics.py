"""Prometheus metrics: request latencies (measured here) and the service's state (read from the
store at scrape time, with aggregate queries only: tasks by state, batches, training seconds)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from metalic.store import reports
from metalic.store.models import TASK_STATES

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Histogram(
    "metalic_http_request_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).observe(seconds)


class StoreCollector:
    def __init__(self, store):
        self.store = store

    def collect(self):
        t = reports.totals(self.store)
        tasks = GaugeMetricFamily("metalic_tasks", "tasks by state", labels=["state"])
        for state in TASK_STATES:
            tasks.add_metric([state], t.tasks.get(state, 0))
        yield tasks
        yield CounterMetricFamily("metalic_batches", "finished training batches", value=t.batches)
        yield CounterMetricFamily("metalic_batch_runs", "runs in finished batches (batches x size)", value=t.batch_runs)
        seconds = t.training_seconds
        yield CounterMetricFamily("metalic_training_seconds", "wall seconds of finished batches", value=seconds)
        yield CounterMetricFamily("metalic_observations", "bandit observations recorded", value=t.observations)


def render(store) -> bytes:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return generate_latest(REGISTRY) + generate_latest(registry)
