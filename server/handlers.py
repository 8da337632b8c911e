"""The gRPC method handlers of the visionsearch services, built from the proto's descriptors.

Every call goes through one wrapper, in both server modes:

1. the API key, when the server has a key file: UNAUTHENTICATED without a known key, PERMISSION_DENIED
   outside its role or collections (``server.auth``);
2. the request bytes: the generated ``add_*Servicer_to_server`` helpers pass them to ``FromString``, and when
   that raises grpc answers UNKNOWN ("Unexpected DecodeError"). Here the deserializer never raises: it returns
   a ``Malformed`` marker, and the wrapper answers INVALID_ARGUMENT naming the message type;
3. the servicer; then its status code and time go to the metrics, when they are on.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from visionsearch.v1 import visionsearch_pb2 as pb

from server.auth import Authorizer, Denied, Key, collection_of
from server.errors import clip
from server.metrics import Metrics

log = logging.getLogger("visionsearch.calls")

SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())

# The key of the call being served (None without a key file): servicers that filter what a key may see
# (ListCollections) read it. Pool threads get it through contextvars.copy_context (server/aio.py).
current_key: contextvars.ContextVar[Key | None] = contextvars.ContextVar("current_key", default=None)


@dataclass(frozen=True)
class Malformed:
    """What a request's bytes decoded to when they are not a valid message of the method's type."""

    type_name: str
    detail: str

    @property
    def message(self) -> str:
        return clip(
            f"the request is not a valid {self.type_name} message ({self.detail}): "
            "encode it with the stubs generated from protos/visionsearch/v1/visionsearch.proto"
        )


def _deserializer(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except (DecodeError, RecursionError, ValueError) as e:
            return Malformed(name, f"{type(e).__name__}: {str(e)[:100]}")

    return decode


def methods(service: str) -> list[tuple[str, type[Message], type[Message]]]:
    """(method name, request class, response class) of every RPC of ``service``."""
    desc = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]]
    return [(m.name, getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)) for m in desc.methods]


def all_methods() -> list[str]:
    """The full path of every RPC of the API, e.g. "/visionsearch.v1.SearchService/Search"."""
    return [f"/{s}/{name}" for s in SERVICE_NAMES for name, _, _ in methods(s)]


Refusal = tuple[grpc.StatusCode, str]


@dataclass(frozen=True)
class Guard:
    """What wraps every call: the API keys (None: no key file) and the metrics (None: off)."""

    auth: Authorizer | None = None
    metrics: Metrics | None = None

    def admit(
        self, method: str, request: Any, context: Any
    ) -> tuple[Key | None, tuple[grpc.StatusCode, str] | None]:
        """The caller's key, or the status that refuses the call before it starts."""
        key = None
        if self.auth is not None:
            try:
                key = self.auth.identify(context.invocation_metadata())
                collection = None if isinstance(request, Malformed) else collection_of(request)
                self.auth.authorize(key, method, collection)
            except Denied as d:
                log.info("%s refused: %s %s", method, d.code.name, d.message)
                return key, (d.code, d.message)
        if isinstance(request, Malformed):
            return key, (grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return key, None

    def done(self, method: str, code: grpc.StatusCode | None, t0: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_call(method, (code or grpc.StatusCode.OK).name, time.perf_counter() - t0)


def sync_behavior(guard: Guard, method: str, fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        t0 = time.perf_counter()
        code: grpc.StatusCode | None = None
        try:
            key, refusal = guard.admit(method, request, context)
            if refusal is not None:
                code = refusal[0]
                context.abort(*refusal)
            token = current_key.set(key)
            try:
                return fn(request, context)
            finally:
                current_key.reset(token)
        except BaseException:
            code = code or context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            guard.done(method, code, t0)

    return behavior


def aio_behavior(guard: Guard, method: str, fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        code: grpc.StatusCode | None = None
        try:
            key, refusal = guard.admit(method, request, context)
            if refusal is not None:
                code = refusal[0]
                await context.abort(*refusal)
            current_key.set(key)  # this call's own task: nothing to reset
            return await fn(request, context)
        except BaseException:
            code = code or context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            guard.done(method, code, t0)

    return behavior


def add_service(
    server: Any,
    service: str,
    servicer: Any,
    wrap: Callable[[Guard, str, Callable[..., Any]], Callable[..., Any]],
    guard: Guard,
) -> None:
    """Register ``servicer``'s methods for ``service`` (full name) on a sync or aio server."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            wrap(guard, f"/{service}/{name}", getattr(servicer, name)),
            request_deserializer=_deserializer(req),
            response_serializer=resp.SerializeToString,
        )
        for name, req, resp in methods(service)
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
