"""Small helpers every servicer uses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from embedder.batcher import CallerGone
from kernels.payload_index import Node
from server.errors import Error, fail
from server.filters import compile_filter
from server.storage import AnyCollection


def check_deadline(context: grpc.ServicerContext, before: str) -> None:
    """Refuse to start expensive work for a caller whose deadline has already passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        fail(Error.DEADLINE, f"deadline exceeded before {before}")


@dataclass(frozen=True)
class Budget:
    """What the embedding worker needs to drop work nobody waits for: the caller's deadline (a
    ``time.monotonic()`` value, None without one) and an event set when the call ends, which matters only
    while the call is still waiting."""

    deadline: float | None
    cancelled: CallerGone


def call_budget(context: grpc.ServicerContext, before: str) -> Budget:
    check_deadline(context, before)
    remaining = context.time_remaining()
    cancelled = CallerGone()
    # The callback runs when the call ends for any reason; it matters only if the call is still waiting.
    # A sync context that has already ended refuses the callback (False): the caller is gone already.
    if context.add_callback(cancelled.set) is False:
        cancelled.set()
    return Budget(None if remaining is None else time.monotonic() + remaining, cancelled)


def request_filter(c: AnyCollection, request: Any) -> Node | None:
    """A request's filter compiled for ``c`` (INVALID_ARGUMENT for one it cannot answer), None without."""
    return compile_filter(request.filter, c.settings.indexed) if request.HasField("filter") else None
