"""Per-collection entries in the standard health service (grpc.health.v1), beside the server's own.

``Check(service="visionsearch.collection/NAME")`` answers SERVING for a collection that is served and
NOT_SERVING for one found damaged at start (CollectionInfo.state_reason says why); a dropped collection
answers SERVICE_UNKNOWN. The server's own entry ("") stays SERVING while any collection is damaged: the
others are served, and a load balancer should keep sending them traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from grpc_health.v1 import health_pb2

PREFIX = "visionsearch.collection/"
Status = health_pb2.HealthCheckResponse.ServingStatus


class CollectionHealth:
    def __init__(self, set_status: Callable[[str, int], None]) -> None:
        self._set = set_status

    def ready(self, name: str) -> None:
        self._set(PREFIX + name, health_pb2.HealthCheckResponse.SERVING)

    def damaged(self, name: str) -> None:
        self._set(PREFIX + name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def dropped(self, name: str) -> None:
        self._set(PREFIX + name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
