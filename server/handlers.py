"""The gRPC method handlers of the visionsearch services, built from the proto's descriptors.

The generated ``add_*Servicer_to_server`` helpers pass the request bytes to ``FromString``; when that raises,
grpc answers UNKNOWN ("Unexpected DecodeError") and logs a traceback. Here the deserializer never raises: it
returns a ``Malformed`` marker, and the handler answers INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from visionsearch.v1 import visionsearch_pb2 as pb

from server.errors import clip

SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


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


def sync_behavior(fn: Callable[[Any, Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return fn(request, context)

    return behavior


def aio_behavior(fn: Callable[[Any, Any], Any]) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await fn(request, context)

    return behavior


def add_service(
    server: Any, service: str, servicer: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Register ``servicer``'s methods for ``service`` (full name) on a sync or aio server."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            wrap(getattr(servicer, name)),
            request_deserializer=_deserializer(req),
            response_serializer=resp.SerializeToString,
        )
        for name, req, resp in methods(service)
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
