"""Small helpers every servicer uses."""

from __future__ import annotations

import grpc

from server.errors import Error, fail


def check_deadline(context: grpc.ServicerContext, before: str) -> None:
    """Refuse to start expensive work for a caller whose deadline has already passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        fail(Error.DEADLINE, f"deadline exceeded before {before}")
