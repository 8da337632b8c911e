"""Small helpers every servicer uses."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
from pyroaring import BitMap
from visionsearch.v1 import visionsearch_pb2 as pb

from server.errors import Error, fail
from server.filters import compile_filter
from server.storage import Collection


def check_deadline(context: grpc.ServicerContext, before: str) -> None:
    """Refuse to start expensive work for a caller whose deadline has already passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        fail(Error.DEADLINE, f"deadline exceeded before {before}")


@dataclass(frozen=True)
class Budget:
    """What the embedding worker needs to drop work nobody waits for: the caller's deadline (a
    ``time.monotonic()`` value, None without one) and an event set when the call ends early."""

    deadline: float | None
    cancelled: threading.Event


def call_budget(context: grpc.ServicerContext, before: str) -> Budget:
    check_deadline(context, before)
    remaining = context.time_remaining()
    cancelled = threading.Event()
    # The callback runs when the call ends for any reason; it matters only if the call is still waiting.
    context.add_callback(cancelled.set)
    return Budget(None if remaining is None else time.monotonic() + remaining, cancelled)


def passing(c: Collection, request_filter: pb.Filter) -> BitMap:
    """The rows of ``c`` that pass a request's filter (INVALID_ARGUMENT for a filter it cannot answer)."""
    return c.filter_rows(compile_filter(request_filter, c.settings.indexed, c.rows_for_ids))
