"""``GET /metrics``: Prometheus text format, from a registry of this application's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shelltrail.actors import ProcessSupervisor
from shelltrail.eventstore import EventStore

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class _RuntimeCollector(Collector):
    """Reads the writer's and the supervisor's counters at scrape time."""

    def __init__(self, store: EventStore, supervisor: ProcessSupervisor) -> None:
        self._store = store
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        writer, supervisor = self._store.writer, self._supervisor
        yield CounterMetricFamily(
            "shelltrail_events_appended", "Events committed to the log.", writer.events_committed
        )
        yield CounterMetricFamily(
            "shelltrail_append_batches", "Append transactions committed.", writer.batches_committed
        )
        yield CounterMetricFamily(
            "shelltrail_append_seconds",
            "Time spent committing append transactions.",
            writer.commit_seconds_total,
        )
        yield CounterMetricFamily(
            "shelltrail_output_bytes",
            "Output bytes committed to the log.",
            writer.payload_bytes_committed,
        )
        yield GaugeMetricFamily(
            "shelltrail_writer_pending_bytes",
            "Output bytes waiting for the writer (back-pressure blocks actors past a bound).",
            writer.pending_bytes,
        )
        yield GaugeMetricFamily(
            "shelltrail_writer_queued_appends",
            "Appends waiting for the writer (its lag).",
            writer.queued_appends,
        )
        yield CounterMetricFamily(
            "shelltrail_bulk_appends_held",
            "Bulk output appends that waited for requests being answered (flood control).",
            writer.bulk_appends_held,
        )
        yield CounterMetricFamily(
            "shelltrail_runs_started", "Runs accepted by this server.", supervisor.runs_accepted
        )
        yield CounterMetricFamily(
            "shelltrail_runs_finished", "Runs of this server that ended.", supervisor.runs_ended
        )
        yield GaugeMetricFamily(
            "shelltrail_runs_running", "Runs executing on this server.", supervisor.running_count
        )
        yield GaugeMetricFamily(
            "shelltrail_queue_depth", "Runs waiting for a slot.", supervisor.queued_count
        )
        yield GaugeMetricFamily(
            "shelltrail_live_followers",
            "Live followers of process streams (SSE and follow=true clients).",
            self._store.hub.follower_count,
        )


class Metrics:
    """The application's metrics; :meth:`middleware` counts and times every request."""

    def __init__(self, store: EventStore, supervisor: ProcessSupervisor) -> None:
        self.registry = CollectorRegistry()
        self._store = store
        self.requests = Counter(
            "shelltrail_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shelltrail_http_request_duration_seconds",
            "HTTP request duration by route (streams: until the stream ends).",
            ["method", "route"],
            registry=self.registry,
        )
        self.runs_by_status = Gauge(
            "shelltrail_processes",
            "Processes in the log by status (deleted ones excluded).",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(store, supervisor))

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
        self.requests.labels(request.method, route, str(status)).inc()
        self.latency.labels(request.method, route).observe(seconds)

    async def handle(self, _request: web.Request) -> web.Response:
        rows = await self._store.pool.fetch(
            "SELECT status, count(*) AS n FROM processes WHERE NOT deleted GROUP BY status"
        )
        counts = {r["status"]: r["n"] for r in rows}
        for status in ("queued", "running", "succeeded", "failed", "killed", "lost"):
            self.runs_by_status.labels(status).set(counts.get(status, 0))
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE}
        )
