"""Prometheus metrics, one registry per app (no process-wide state), scraped at GET /metrics.

Per request (from the request log's record): `ortserve_requests_total{route,method,status}`,
`ortserve_request_duration_seconds{route}`, `ortserve_time_to_first_token_seconds{model}` and
`ortserve_tokens_total{model,kind="prompt"|"completion"}`, where `model` is the name the request used.
At each scrape, from the registry's loaded models (labelled by their weights folder, which every name
sharing them shares): `ortserve_loaded_models`, `ortserve_requests_in_flight{model}` (running and queued),
`ortserve_queue_depth{model}` (in flight past `num_parallel`, for chat models), `ortserve_model_resident_bytes
{model}` (a chat runner's resident memory; an in-process embedding model's files) and
`ortserve_runner_restarts_total{model}`, and `ortserve_embedding_batch_size{model}` (a histogram of the rows per
onnxruntime run of an embedding model's micro-batcher, since it loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ortserve.server.loading import ResidentModel
from ortserve.server.request_log import RequestRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)  # the embedding batch-size histogram's buckets
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, loaded: Callable[[], list[ResidentModel]], num_parallel: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ortserve_requests", "HTTP requests answered", ["route", "method", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "ortserve_request_duration_seconds",
            "Time to answer a request in full",
            ["route"],
            buckets=SECONDS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "ortserve_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token",
            ["model"],
            buckets=SECONDS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "ortserve_tokens",
            "Tokens read (prompt) and generated (completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.registry.register(_LoadedModels(loaded, num_parallel))

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.route, record.method, str(record.status)).inc()
        self.duration.labels(record.route).observe(record.total)
        if record.model is None:
            return
        if record.ttft is not None:
            self.ttft.labels(record.model).observe(record.ttft)
        if record.prompt_tokens:
            self.tokens.labels(record.model, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self.tokens.labels(record.model, "completion").inc(record.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LoadedModels(Collector):
    """Gauges read from the registry at scrape time (nothing to keep in step while models come and go)."""

    def __init__(self, loaded: Callable[[], list[ResidentModel]], num_parallel: int):
        self.loaded, self.num_parallel = loaded, num_parallel

    def collect(self) -> Iterator[Metric]:
        models = self.loaded()
        yield GaugeMetricFamily("ortserve_loaded_models", "Models loaded now", value=len(models))
        in_flight = GaugeMetricFamily("ortserve_requests_in_flight", "Requests running or queued", labels=["model"])
        queued = GaugeMetricFamily("ortserve_queue_depth", "Requests waiting for a place", labels=["model"])
        memory = GaugeMetricFamily("ortserve_model_resident_bytes", "Memory a loaded model holds", labels=["model"])
        gpu = GaugeMetricFamily(
            "ortserve_model_gpu_bytes", "GPU memory a loaded model is estimated to take (size_vram)", labels=["model"]
        )
        restarts = CounterMetricFamily("ortserve_runner_restarts", "Runner processes started again", labels=["model"])
        batches = HistogramMetricFamily(
            "ortserve_embedding_batch_size",
            "Rows per onnxruntime run of the embeddings micro-batcher",
            labels=["model"],
        )
        for model in models:
            label = [model.weights]
            in_flight.add_metric(label, model.requests)
            waiting = max(0, model.requests - self.num_parallel) if model.task == "chat" else 0
            queued.add_metric(label, waiting)
            memory.add_metric(label, _resident_bytes(model))
            gpu.add_metric(label, model.size_vram)
            restarts.add_metric(label, model.restarts)
            if model.task == "embedding":
                buckets = [
                    (str(le), sum(n for size, n in model.batch_sizes.items() if size <= le)) for le in BATCH_ROWS
                ]
                buckets.append(("+Inf", sum(model.batch_sizes.values())))
                rows = sum(size * n for size, n in model.batch_sizes.items())
                batches.add_metric(label, buckets, float(rows))
        yield from (in_flight, queued, memory, gpu, restarts, batches)


def _resident_bytes(model: ResidentModel) -> float:
    if model.pid is not None:
        try:
            return float(psutil.Process(model.pid).memory_info().rss)
        except psutil.Error:
            pass
    return float(model.size)
