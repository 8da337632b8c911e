"""Server lifecycle: build the gRPC server (``create_server``), run it until SIGTERM/SIGINT (``serve``)."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import handlers
from server.aio import AioServer, adapt, add_health_and_reflection, inline_rules
from server.config import Config
from server.default_collection import ensure_default_collection
from server.handlers import SERVICE_NAMES
from server.health import CollectionHealth
from server.servicers import CollectionServicer, EmbedServicer, SearchServicer, TagServicer
from server.services import Services

log = logging.getLogger("visionsearch.server")

__all__ = ["SERVICE_NAMES", "AddressUnavailable", "Running", "create_server", "serve"]

SERVICERS: dict[str, type] = {
    "visionsearch.v1.EmbedService": EmbedServicer,
    "visionsearch.v1.SearchService": SearchServicer,
    "visionsearch.v1.TagService": TagServicer,
    "visionsearch.v1.CollectionService": CollectionServicer,
}


class AddressUnavailable(OSError):
    """The configured address cannot be bound."""


class Running:
    """A started server and what it serves; ``stop`` drains calls and flushes collections to disk."""

    def __init__(
        self,
        server: grpc.Server | AioServer,
        port: int,
        services: Services,
        health_servicer: health.HealthServicer | health.aio.HealthServicer,
    ):
        self.server = server
        self.port = port
        self.services = services
        self.health = health_servicer
        self._stopped = False
        self._stop_lock = threading.Lock()

    def stop(self, grace: float | None = None) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        grace = self.services.config.grace_seconds if grace is None else grace
        if isinstance(self.server, AioServer):
            self.server.call(self.health.enter_graceful_shutdown())  # a coroutine in grpc.aio
        else:
            self.health.enter_graceful_shutdown()
        # Refuse new calls, let in-flight ones finish within the grace period, then flush every collection.
        self.server.stop(grace).wait()
        self.services.close()
        log.info("stopped; collections flushed to disk")


def create_server(config: Config, services: Services | None = None) -> Running:
    """Build and start a server on ``config.address`` (port 0 picks a free one); returns it with its port."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A connection that never sends the HTTP/2 preface and settings is closed after this long, instead
        # of holding a file descriptor and memory for ever.
        ("grpc.server_handshake_timeout_ms", int(config.handshake_timeout_s * 1000)),
    ]
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    # Bind first: a taken port should fail in a second, not after minutes of model loading and indexing.
    server: grpc.Server | AioServer
    if config.server_mode == "aio":
        try:
            server = AioServer(options, config.address, config.workers)
            port = server.port
        except RuntimeError:
            port = 0
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), options=options)
        try:
            port = server.add_insecure_port(config.address)
        except RuntimeError:
            port = 0
    if port == 0:
        raise AddressUnavailable(
            f"cannot listen on {config.address} (is another server using it?): "
            "choose another with --address or VISIONSEARCH_ADDRESS"
        )
    services = services or Services.start(config)
    if config.default_collection:
        ensure_default_collection(services)
    health_servicer: health.HealthServicer | health.aio.HealthServicer
    if isinstance(server, AioServer):
        aio = server
        rules = inline_rules(services.cheap_search)
        for service, cls in SERVICERS.items():
            rpcs = [name for name, _, _ in handlers.methods(service)]

            def register(service: str = service, cls: Any = cls, rpcs: list[str] = rpcs) -> None:
                adapted = adapt(cls(services), rpcs, aio.pool, rules)
                handlers.add_service(aio.server, service, adapted, handlers.aio_behavior)

            aio.run(register)
        health_servicer = aio.run(lambda: add_health_and_reflection(aio.server, names))
        aio.start()
        for name in ("", *SERVICE_NAMES):
            aio.call(health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING))

        def set_health(name: str, status: int) -> None:
            aio.call(health_servicer.set(name, status))

    else:
        for service, cls in SERVICERS.items():
            handlers.add_service(server, service, cls(services), handlers.sync_behavior)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(names, server)
        server.start()
        for name in ("", *SERVICE_NAMES):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        set_health = health_servicer.set
    services.collection_health = CollectionHealth(set_health)
    for c in services.store.list():
        services.collection_health.ready(c.name)
    for d in services.store.list_damaged():
        services.collection_health.damaged(d.name)
    log.info("serving", extra={"address": config.address, "port": port, "mode": config.server_mode})
    return Running(server, port, services, health_servicer)


def serve(config: Config) -> None:
    running = create_server(config)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = config.address.rsplit(":", 1)[0]
    print(f"visionsearch listening on {host}:{running.port}", flush=True)
    done.wait()
    running.stop()
