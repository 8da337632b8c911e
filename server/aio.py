"""The same servicers on a ``grpc.aio`` server: one event loop, no thread hop for calls of microseconds.

The sync server hands every call from its polling thread to a pool thread; under load each hand-over waits for
the GIL behind the others, which is most of a vector search's latency (bench/latency.py). Here calls that
only touch memory (a search by vector, id or words, word neighbours, collection info) run inline on the
event loop, and calls that wait on the embedding workers, the sentence encoder or the disk (images,
sentences, upserts, deletes, collection changes) run in a thread pool so that they never stall the loop.

The servicers are the sync ones; ``_Context`` gives them the parts of the sync context they use.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from server.errors import AbortCall

Inline = Callable[[Any], bool]  # request -> whether the call may run on the event loop

# An exact scan of this many multiply-adds takes about a millisecond on one core: the most a call may spend
# on the event loop, where it holds up every other call (a 500,000-word query once stalled health for 13 s).
INLINE_SCAN = 2_000_000


def inline_rules(cheap_search: Callable[[Any], bool]) -> dict[str, Inline]:
    """Per RPC: when it may run inline (anything not listed runs in the pool). ``cheap_search`` says
    whether a Search request's index work is small (see ``Services.cheap_search``)."""
    return {
        # A hybrid search may build its BM25 index first: in the pool.
        "Search": lambda r: (
            r.WhichOneof("query") != "image"
            and not r.text.sentence
            and not r.HasField("hybrid")
            and cheap_search(r)
        ),
        "NearestWords": lambda r: True,
        "Embed": lambda r: r.WhichOneof("input") == "word",
        "GetCollection": lambda r: True,
        "Count": lambda r: True,
    }


class _Context:
    """The sync ``ServicerContext`` calls the servicers make, over an aio context."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortCall(code, details)

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._context.add_done_callback(lambda _ctx: callback())


def adapt(servicer: Any, names: list[str], pool: futures.ThreadPoolExecutor, rules: dict[str, Inline]) -> Any:
    """An object whose async methods ``names`` call ``servicer``'s sync ones, inline or in ``pool``."""

    def make(name: str) -> Callable[..., Any]:
        sync = getattr(servicer, name)
        inline = rules.get(name, lambda r: False)

        async def method(request: Any, context: grpc.aio.ServicerContext) -> Any:
            ctx = _Context(context)
            try:
                if inline(request):
                    return sync(request, ctx)
                # The pool thread runs in a copy of this call's context: its API key and its trace span.
                call = contextvars.copy_context()
                return await asyncio.get_running_loop().run_in_executor(pool, call.run, sync, request, ctx)
            except AbortCall as a:
                await context.abort(a.code, a.details)

        method.__name__ = name
        return method

    return type(f"Aio{type(servicer).__name__}", (), {n: staticmethod(make(n)) for n in names})()


class AioServer:
    """A ``grpc.aio`` server on its own event-loop thread, bound at construction, with the sync server's
    ``stop`` shape. Servicers are added with ``run`` (on the loop) before ``start``."""

    def __init__(
        self,
        options: list[tuple[str, Any]],
        address: str,
        workers: int,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: list[Any] | None = None,
        event_loop: str = "asyncio",
    ) -> None:
        self.pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="aio-pool")
        self._loop: asyncio.AbstractEventLoop
        if event_loop == "uvloop":
            import uvloop  # an optional dependency: only this choice needs it

            self._loop = uvloop.new_event_loop()
        else:
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aio-server", daemon=True)
        self._thread.start()

        async def bind() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(options=options, interceptors=interceptors or None)
            if credentials is None:
                return server, server.add_insecure_port(address)
            return server, server.add_secure_port(address, credentials)

        self.server, self.port = self.call(bind())

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (grpc.aio objects belong to their loop) and return its result."""

        async def call() -> Any:
            return fn()

        return self.call(call())

    def start(self) -> None:
        self.call(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        done = threading.Event()

        async def stop() -> None:
            await self.server.stop(grace)
            done.set()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        return done


def add_health_and_reflection(server: grpc.aio.Server, names: tuple[str, ...]) -> Any:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    add_reflection(server, names, reflection.aio.ReflectionServicer(names))
    return servicer


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: Any, names: tuple[str, ...], servicer: Any) -> None:
    """Serve reflection as v1alpha (grpcio-reflection) and as v1. The two protocols' messages are the same
    fields under another package name, so the v1alpha servicer and messages answer v1 on the wire."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )
