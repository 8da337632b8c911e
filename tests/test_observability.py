"""Watching the server from outside: Prometheus metrics scraped over HTTP after a short load (and parsed),
and OpenTelemetry spans for the stages of a call, collected by the SDK's in-memory exporter."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from visionsearch_client import Client, Item, VisionSearchError

from server.app import Running, create_server
from server.config import Config
from server.services import Services
from tests.conftest import LION, ROOT


@pytest.fixture
def observed(base_config: Config, services: Services, tmp_path: Path) -> Iterator[Running]:
    config = replace(
        base_config, data_dir=tmp_path, default_collection=False, metrics_address="127.0.0.1:0", trace=True,
        snapshot_wal_bytes=4096,
    )  # fmt: skip
    running = create_server(config, services.with_store(config))
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    # The process-wide provider can be set once: this module's spans all go to one in-memory exporter.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        out.setdefault(family.name, {})  # a family with no samples yet (no damaged collection) still counts
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    want = set(labels.items())
    found = [v for k, v in samples.items() if want <= set(k)]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_metrics_after_a_short_load(observed: Running, spans: InMemorySpanExporter) -> None:
    rng = np.random.default_rng(0)
    with Client(f"127.0.0.1:{observed.port}") as c:
        c.create_collection("m", dim=16)
        for n in range(5):
            c.upsert("m", [Item(f"i{n}-{j}", vector=rng.standard_normal(16)) for j in range(50)])
        for _ in range(20):
            c.search("m", vector=rng.standard_normal(16), k=5)
        with pytest.raises(VisionSearchError):
            c.search("missing", vector=rng.standard_normal(16), k=5)
        c.embed_image(LION.read_bytes())
        c.delete("m", ["i0-0"])
    m = scrape(observed.metrics_port)

    calls = m["visionsearch_rpc_calls_total"]
    assert one(calls, method="/visionsearch.v1.SearchService/Search", code="OK") == 20
    assert one(calls, method="/visionsearch.v1.SearchService/Search", code="NOT_FOUND") == 1
    assert one(calls, method="/visionsearch.v1.CollectionService/Upsert", code="OK") == 5
    hist = m["visionsearch_rpc_duration_seconds_count"]
    assert one(hist, method="/visionsearch.v1.SearchService/Search", code="OK") == 20
    total = one(
        m["visionsearch_rpc_duration_seconds_sum"], method="/visionsearch.v1.SearchService/Search", code="OK"
    )
    assert 0 < total < 20  # 20 searches of 250 vectors: well under a second each
    buckets = m["visionsearch_rpc_duration_seconds_bucket"]
    assert one(buckets, method="/visionsearch.v1.SearchService/Search", code="OK", le="+Inf") == 20

    assert one(m["visionsearch_collection_items"], collection="m") == 249
    assert one(m["visionsearch_collection_index"], collection="m", index="exact") == 1
    assert one(m["visionsearch_collection_index_building"], collection="m") == 0
    assert one(m["visionsearch_collection_index_build_progress"], collection="m") == 1
    assert (
        0 <= one(m["visionsearch_collection_wal_bytes"], collection="m") < 4096 + 8192
    )  # snapshots reset it
    assert (
        abs(one(m["visionsearch_collection_last_snapshot_timestamp_seconds"], collection="m") - time.time())
        < 300
    )
    assert one(m["visionsearch_embed_queue_images"]) == 0
    assert one(m["visionsearch_embed_batch_images_count"]) >= 1
    assert one(m["visionsearch_embed_batch_images_sum"]) >= 1
    assert 0 < one(m["visionsearch_embed_forward_seconds_sum"]) < 30


def test_spans_for_the_stages_of_a_call(observed: Running, spans: InMemorySpanExporter) -> None:
    spans.clear()
    rng = np.random.default_rng(1)
    with Client(f"127.0.0.1:{observed.port}") as c:
        c.create_collection("t", dim=16)
        c.upsert("t", [Item(f"i{j}", vector=rng.standard_normal(16)) for j in range(20)])
        spans.clear()
        c.search("t", vector=rng.standard_normal(16), k=3)  # runs on the event loop
        c.embed_image(LION.read_bytes())  # runs in the pool: its span must still find its parent
    by_name = {s.name: s for s in spans.get_finished_spans()}
    rpc = by_name["/visionsearch.v1.SearchService/Search"]
    embed_rpc = by_name["/visionsearch.v1.EmbedService/Embed"]
    for stage, parent in (("decode", rpc), ("search", rpc), ("encode", rpc), ("embed", embed_rpc)):
        child = by_name[stage]
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, stage
        assert child.context.trace_id == parent.context.trace_id
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time


def test_the_grafana_dashboard_plots_only_metrics_the_server_exports(observed: Running) -> None:
    import json
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", n)
        for e in exprs
        for n in re.findall(r"visionsearch_\w+", e)
    }
    with Client(f"127.0.0.1:{observed.port}") as c:
        c.create_collection("g", dim=2)
        c.search("g", vector=[1, 0], k=1)
        c.embed_image(LION.read_bytes())
    exported = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in scrape(observed.metrics_port)}
    assert used and used <= exported, used - exported
