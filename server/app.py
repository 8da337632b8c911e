"""Server lifecycle: build the gRPC server (``create_server``), run it until SIGTERM/SIGINT (``serve``)."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder.heap import release_free_memory
from server import handlers, tracing
from server.aio import (
    REFLECTION_V1,
    AioServer,
    adapt,
    add_health_and_reflection,
    add_reflection,
    inline_rules,
)
from server.auth import AioReflectionGate, Authorizer, ReflectionGate
from server.config import Config
from server.default_collection import ensure_default_collection
from server.handlers import SERVICE_NAMES, Guard
from server.health import CollectionHealth
from server.memory import freeze_startup_heap
from server.metrics import Metrics
from server.servicers import CollectionServicer, EmbedServicer, SearchServicer, ServerServicer, TagServicer
from server.services import Services
from server.tls import CertificateFiles, check_exposure

log = logging.getLogger("visionsearch.server")

__all__ = ["SERVICE_NAMES", "AddressUnavailable", "Running", "create_server", "serve"]

SERVICERS: dict[str, type] = {
    "visionsearch.v1.EmbedService": EmbedServicer,
    "visionsearch.v1.SearchService": SearchServicer,
    "visionsearch.v1.TagService": TagServicer,
    "visionsearch.v1.CollectionService": CollectionServicer,
    "visionsearch.v1.ServerService": ServerServicer,
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
        *,
        auth: Authorizer | None = None,
        certificates: CertificateFiles | None = None,
        metrics: Metrics | None = None,
        metrics_port: int = 0,
    ):
        self.server = server
        self.port = port
        self.services = services
        self.health = health_servicer
        self.auth = auth
        self.certificates = certificates
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._stopped = False
        self._stop_lock = threading.Lock()

    def reload(self) -> None:
        """Re-read the API key file now (SIGHUP); certificates are re-read at each new connection anyway."""
        if self.auth is not None:
            self.auth.reload()

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
        if self.metrics is not None:
            self.metrics.close()
        if self.auth is not None:
            self.auth.close()
        log.info("stopped; collections flushed to disk")


def create_server(config: Config, services: Services | None = None) -> Running:
    """Build and start a server on ``config.address`` (port 0 picks a free one); returns it with its port.

    Raises ``UnsafeBind``, ``TlsConfigError`` or ``KeyFileError`` for a configuration it will not serve with,
    before loading anything."""
    check_exposure(
        config.address, tls=bool(config.tls_cert), keys=bool(config.api_keys), insecure=config.insecure
    )
    certificates = (
        CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
    )
    auth = Authorizer(Path(config.api_keys)) if config.api_keys else None
    if config.otlp_endpoint:
        tracing.configure(config.otlp_endpoint)
    aio_mode = config.server_mode == "aio"
    interceptors: list[Any] = []
    if auth is not None:
        interceptors.append(AioReflectionGate(auth) if aio_mode else ReflectionGate(auth))
    if config.trace or config.otlp_endpoint:
        tracing.enable()
        interceptors += tracing.interceptors(aio_mode)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A connection that never completes its TLS and HTTP/2 handshake is closed after this long, instead
        # of holding a file descriptor and memory for ever.
        ("grpc.server_handshake_timeout_ms", int(config.handshake_timeout_s * 1000)),
    ]
    credentials = certificates.credentials() if certificates is not None else None
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    # Bind first: a taken port should fail in a second, not after minutes of model loading and indexing.
    server: grpc.Server | AioServer
    if aio_mode:
        try:
            server = AioServer(
                options, config.address, config.workers, credentials, interceptors, config.event_loop
            )
            port = server.port
        except RuntimeError:
            port = 0
    else:
        pool = futures.ThreadPoolExecutor(max_workers=config.workers)
        server = grpc.server(pool, options=options, interceptors=interceptors or None)
        try:
            if credentials is None:
                port = server.add_insecure_port(config.address)
            else:
                port = server.add_secure_port(config.address, credentials)
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
    metrics = Metrics(services) if config.metrics_address else None
    metrics_port = metrics.serve(config.metrics_address) if metrics is not None else 0
    guard = Guard(auth, metrics)
    health_servicer: health.HealthServicer | health.aio.HealthServicer
    if isinstance(server, AioServer):
        aio = server
        rules = inline_rules(services.cheap_search)
        for service, cls in SERVICERS.items():
            rpcs = [name for name, _, _ in handlers.methods(service)]

            def register(service: str = service, cls: Any = cls, rpcs: list[str] = rpcs) -> None:
                adapted = adapt(cls(services), rpcs, aio.pool, rules)
                handlers.add_service(aio.server, service, adapted, handlers.aio_behavior, guard)

            aio.run(register)
        health_servicer = aio.run(lambda: add_health_and_reflection(aio.server, names))
        aio.start()
        for name in ("", *SERVICE_NAMES):
            aio.call(health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING))

        def set_health(name: str, status: int) -> None:
            aio.call(health_servicer.set(name, status))

    else:
        for service, cls in SERVICERS.items():
            handlers.add_service(server, service, cls(services), handlers.sync_behavior, guard)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        add_reflection(server, names, reflection.ReflectionServicer(names))
        server.start()
        for name in ("", *SERVICE_NAMES):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        set_health = health_servicer.set
    services.collection_health = CollectionHealth(set_health)
    for c in services.store.list():
        services.collection_health.ready(c.name)
    for d in services.store.list_damaged():
        services.collection_health.damaged(d.name)
    log.info(
        "serving",
        extra={
            "address": config.address, "port": port, "mode": config.server_mode, "tls": bool(certificates),
            "mtls": bool(config.tls_client_ca), "api_keys": bool(auth), "metrics_port": metrics_port,
        },
    )  # fmt: skip
    return Running(
        server, port, services, health_servicer,
        auth=auth, certificates=certificates, metrics=metrics, metrics_port=metrics_port,
    )  # fmt: skip


def serve(config: Config) -> None:
    running = create_server(config)
    frozen = freeze_startup_heap()
    release_free_memory()  # what start-up (a default collection's build) freed, back to the OS
    log.info("start-up heap frozen", extra={"objects": frozen})
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        done.set()

    def on_hangup(signum: int, _frame: object) -> None:
        log.info("received SIGHUP: reloading the API keys")
        threading.Thread(target=running.reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    host = config.address.rsplit(":", 1)[0]
    print(f"visionsearch listening on {host}:{running.port}", flush=True)
    if running.metrics_port:
        metrics_host = config.metrics_address.rsplit(":", 1)[0] or "127.0.0.1"
        print(f"visionsearch metrics on http://{metrics_host}:{running.metrics_port}/metrics", flush=True)
    done.wait()
    running.stop()
