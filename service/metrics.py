"""Service metrics through Ray's metrics export (`ray.serve.metrics`).

Every replica records into Ray's metrics agent, and the agent serves one Prometheus endpoint per
node (the port given to `ray start --metrics-export-port` / `ray.init(_metrics_export_port=)`)
beside Ray Serve's built-in `ray_serve_*` metrics. Scraping the load-balanced HTTP proxy would
see one replica per scrape; this endpoint sees all of them. Ray prefixes every name with `ray_`:
`zeroi2v_requests_total` is scraped as `ray_zeroi2v_requests_total`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Ray exports a gauge only while it is being set: one left alone ages out of the endpoint after
# two export intervals, so an idle service's gauges vanished instead of reading 0. Replicas set
# theirs again this often (service/server.py also shortens Ray's export interval to 2 s).
GAUGE_REFRESH_S = 1.0


def keep_fresh(refresh: Callable[[], None], period_s: float = GAUGE_REFRESH_S) -> asyncio.Task:
    """Call `refresh` every `period_s` on the running loop, for as long as the replica lives."""

    async def loop() -> None:
        while True:
            refresh()
            await asyncio.sleep(period_s)

    return asyncio.get_running_loop().create_task(loop())


# Seconds-long video work: from a few ms (a cached short clip on GPU) to a minute (a long upload
# decoded on CPU).
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


class IngressMetrics:
    """Recorded by the ingress: requests by endpoint and status, stage latencies, in-flight."""

    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "zeroi2v_requests", "HTTP requests by endpoint and status", ("endpoint", "status")
        )
        self.latency = metrics.Histogram(
            "zeroi2v_latency_seconds",
            "Request latency by stage (decode, queue, inference, total; a timeline's: "
            "timeline_window, between records, and timeline, to its summary)",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("stage",),
        )
        self.in_flight = metrics.Gauge(
            "zeroi2v_in_flight_requests", "Requests admitted and not yet answered"
        )
        self.timelines = metrics.Gauge(
            "zeroi2v_timelines_in_flight", "Timelines receiving, decoding or streaming"
        )
        self.windows = metrics.Counter(
            "zeroi2v_timeline_windows", "Timeline windows answered (rate: windows per second)"
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        if endpoint in ("/classify", "/detect"):
            self.latency.observe(seconds, tags={"stage": "total"})

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.latency.observe(seconds, tags={"stage": stage})

    def set_in_flight(self, count: int) -> None:
        self.in_flight.set(count)

    def set_timelines(self, count: int) -> None:
        self.timelines.set(count)

    def count_windows(self, count: int) -> None:
        self.windows.inc(count)


class ModelMetrics:
    """Recorded by the model replica: batch sizes (in views) and views waiting to be batched."""

    def __init__(self):
        from ray.serve import metrics

        self.batch_size = metrics.Histogram(
            "zeroi2v_batch_size", "Views per model batch", boundaries=BATCH_BUCKETS
        )
        self.queue_depth = metrics.Gauge(
            "zeroi2v_queue_depth", "Views at the model: waiting for a batch or in one"
        )
