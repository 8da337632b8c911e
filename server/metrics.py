"""Prometheus metrics (prometheus-client) on their own HTTP port (``--metrics-address``).

Counted as calls are answered: calls and latency per RPC and status code; embedding batch sizes and forward
time. Read at scrape time from the live objects, so nothing in storage knows about metrics: items, index in
use, index build progress, log bytes and the last snapshot per collection, damaged collections, and the
embedding queue's depth. ``grafana/visionsearch.json`` is a dashboard of these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger("visionsearch.metrics")

LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StateCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.s = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        items = GaugeMetricFamily(
            "visionsearch_collection_items", "Items in a collection", labels=["collection"]
        )
        index = GaugeMetricFamily(
            "visionsearch_collection_index", "The index answering image-space searches (1)",
            labels=["collection", "index"],
        )  # fmt: skip
        building = GaugeMetricFamily(
            "visionsearch_collection_index_building", "1 while an index is built in the background",
            labels=["collection"],
        )  # fmt: skip
        progress = GaugeMetricFamily(
            "visionsearch_collection_index_build_progress",
            "Share of the rows added to the graph being built (0 to 1; 1 when no build runs)",
            labels=["collection"],
        )
        wal = GaugeMetricFamily(
            "visionsearch_collection_wal_bytes", "Bytes in the write-ahead log since the last snapshot",
            labels=["collection"],
        )  # fmt: skip
        snap = GaugeMetricFamily(
            "visionsearch_collection_last_snapshot_timestamp_seconds",
            "When the last snapshot was written (or the collection opened), Unix time",
            labels=["collection"],
        )
        damaged = GaugeMetricFamily(
            "visionsearch_collection_damaged", "1 for a collection found damaged and not served",
            labels=["collection"],
        )  # fmt: skip
        for c in self.s.store.list():
            items.add_metric([c.name], len(c))
            index.add_metric([c.name, c.index_kind()], 1)
            done = c.index_build_progress()
            building.add_metric([c.name], 0 if done is None else 1)
            progress.add_metric([c.name], 1.0 if done is None else done)
            wal.add_metric([c.name], c.wal_bytes)
            snap.add_metric([c.name], c.last_snapshot_time)
        for d in self.s.store.list_damaged():
            damaged.add_metric([d.name], 1)
        queue = GaugeMetricFamily("visionsearch_embed_queue_images", "Images waiting for an embedding worker")
        queue.add_metric([], self.s.images.batcher.queue_depth)
        yield from (items, index, building, progress, wal, snap, damaged, queue)


class Metrics:
    def __init__(self, services: Services, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "visionsearch_rpc_calls",
            "RPCs answered, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "visionsearch_rpc_duration_seconds", "Time to answer an RPC, by method and gRPC status code",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = Histogram(
            "visionsearch_embed_batch_images", "Images per embedding forward",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.forward = Histogram(
            "visionsearch_embed_forward_seconds", "Time of one embedding forward (a batch)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r,
        )  # fmt: skip
        r.register(_StateCollector(services))
        services.images.batcher.on_batch = self.observe_batch
        self._server: Any = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch.observe(images)
        self.forward.observe(seconds)

    def serve(self, address: str) -> int:
        """Serve /metrics on ``address`` (host:port; port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class CallTimer:
    """Times one call for ``Metrics.observe_call``."""

    __slots__ = ("t0",)

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0
