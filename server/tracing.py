"""Optional OpenTelemetry traces.

Each RPC gets a server span from opentelemetry-instrumentation-grpc's interceptor; inside it the servicers
open child spans for the stages of a call (``decode``: request to arrays, ``embed``: images or text through
a model, ``search``: the index, ``encode``: the response message). With ``--otlp-endpoint`` set, spans are
batched and exported over OTLP/gRPC. Without ``--trace`` or ``--otlp-endpoint`` a stage is a shared
``nullcontext``: even OpenTelemetry's no-op span costs a few microseconds to start and attach, three times per
search (bench/latency.py).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace

log = logging.getLogger("visionsearch.tracing")

_tracer = trace.get_tracer("visionsearch")
_NO_SPAN = nullcontext()
_enabled = False


def enable() -> None:
    """Open spans from now on (for this process: servers with tracing off then pay for no-op spans)."""
    global _enabled
    _enabled = True


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current call's span (a shared no-op when tracing is off)."""
    return _tracer.start_as_current_span(name) if _enabled else _NO_SPAN


def configure(endpoint: str) -> Any:
    """Export spans to an OTLP collector at ``endpoint`` (e.g. http://otel-collector:4317)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "visionsearch"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    log.info("tracing: spans exported over OTLP to %s", endpoint)
    return provider


def interceptors(aio: bool) -> list[Any]:
    """The server interceptor that opens each RPC's span (for the provider in force at call time)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, server_interceptor

    return [aio_server_interceptor()] if aio else [server_interceptor()]
