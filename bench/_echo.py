"""A bare grpcio server in a child process: one method that answers every request with ``--response-bytes``
fixed bytes, no servicer, no protobuf parsing. Its unloaded round trip is the floor any gRPC service written
on grpcio's asyncio server pays on this machine (bench/latency.py compares visionsearch's calls with it).

    python bench/_echo.py --response-bytes 240      # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

METHOD = "/bench.Echo/Echo"


async def serve(response: bytes) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)},  # bytes in, bytes out: no (de)serializer
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--response-bytes", type=int, required=True)
    args = ap.parse_args()
    asyncio.run(serve(b"\x01" * args.response_bytes))


if __name__ == "__main__":
    main()
