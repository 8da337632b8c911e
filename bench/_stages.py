"""Where one call's time goes, from the server's own OpenTelemetry spans.

The benchmark runs a minimal OTLP/gRPC trace collector (``Collector``) and starts the server with
``--otlp-endpoint`` pointing at it. Every RPC then has a server span (opentelemetry-instrumentation-grpc's
interceptor) with child spans for the servicer's stages (``decode``, ``search``, ``encode``; see
server/tracing.py). ``breakdown`` turns them into medians per stage, plus what the handler did outside its
stages and what the caller saw outside the handler (gRPC core, HTTP/2, the event loop, the client stack).
Spans cost a few microseconds each, so the breakdown is measured in a run of its own, never in the floor.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

STAGES = ("decode", "embed", "search", "encode", "write")


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span's name, parent and duration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[bytes, bytes, bytes, str, int]] = []  # trace, span, parent, name, ns
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        otlp_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(
        self, request: otlp.ExportTraceServiceRequest, context: Any
    ) -> otlp.ExportTraceServiceResponse:
        got = [
            (s.trace_id, s.span_id, s.parent_span_id, s.name, s.end_time_unix_nano - s.start_time_unix_nano)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
        with self._lock:
            self.spans += got
        return otlp.ExportTraceServiceResponse()

    def count(self, suffix: str) -> int:
        with self._lock:
            return sum(1 for s in self.spans if s[3].endswith(suffix))

    def breakdown(self, rpc_suffix: str) -> dict[str, float]:
        """Median microseconds per stage of the calls whose server span name ends with ``rpc_suffix``:
        ``handler`` (the server span), each stage, and ``handler_other`` (handler minus its stages)."""
        with self._lock:
            spans = list(self.spans)
        children: dict[bytes, dict[str, int]] = defaultdict(dict)
        for _, _, parent, name, ns in spans:
            if parent and name in STAGES:
                children[parent][name] = children[parent].get(name, 0) + ns
        rows: dict[str, list[float]] = defaultdict(list)
        for _, span_id, _, name, ns in spans:
            if not name.endswith(rpc_suffix):
                continue
            stages = children.get(span_id, {})
            rows["handler"].append(ns / 1e3)
            for stage in STAGES:
                if stage in stages:
                    rows[stage].append(stages[stage] / 1e3)
            rows["handler_other"].append((ns - sum(stages.values())) / 1e3)
        return {k: float(np.median(v)) for k, v in rows.items()}

    def stop(self) -> None:
        self._server.stop(0).wait()
