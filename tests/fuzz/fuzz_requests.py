"""atheris target: request decoding and the servicers behind it, on arbitrary bytes.

The bytes pick an RPC and are decoded by the server's own deserializer (server.handlers), which must never
raise. A decoded request is then served by the real servicers over real models and a real collection store
(a temporary data folder); every refusal must be one of the statuses the proto documents, never INTERNAL or
UNKNOWN. The context is the one stand-in: it records the status instead of sending it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["server"]):
    import grpc
    from visionsearch.v1 import visionsearch_pb2 as pb

    from server.app import SERVICERS
    from server.config import Config
    from server.errors import AbortCall
    from server.handlers import Malformed, _deserializer, methods
    from server.services import Services

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class Context:
    """The parts of a ServicerContext the servicers use; ``abort`` raises as the aio server's does."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortCall(code, details)

    def time_remaining(self) -> float:
        return 30.0

    def add_callback(self, callback: Any) -> None:
        pass


def build() -> list[tuple[str, Any, Any]]:
    data = Path(tempfile.mkdtemp(prefix="fuzz-requests-"))
    config = Config(data_dir=data, default_collection=False, embed_processes=0, fsync=False, max_k=100)
    services = Services.start(config)
    servicers = {name: cls(services) for name, cls in SERVICERS.items()}
    coll = servicers["visionsearch.v1.CollectionService"]
    coll.CreateCollection(pb.CreateCollectionRequest(config=pb.CollectionConfig(name="v", dim=4)), Context())
    item = pb.Item(id="a", vector=pb.Vector(f32=b"\x00\x00\x80\x3f" * 4))
    coll.Upsert(pb.UpsertRequest(collection="v", items=[item]), Context())
    table = []
    for service, servicer in servicers.items():
        for name, req, _ in methods(service):
            table.append((f"{service}/{name}", _deserializer(req), getattr(servicer, name)))
    return table


TABLE: list[tuple[str, Any, Any]] = []


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name, decode, serve = TABLE[fdp.ConsumeIntInRange(0, len(TABLE) - 1)]
    request = decode(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if isinstance(request, Malformed):
        assert "not a valid" in request.message
        return
    if name.endswith(("DropCollection", "UpdateCollection")) and request.name == "v":
        return  # keep the fixture collection
    try:
        serve(request, Context())
    except AbortCall as a:
        assert a.code not in FORBIDDEN, (name, a.code, a.details)
        assert len(a.details) <= 1000, (name, len(a.details))


if __name__ == "__main__":
    os.environ.setdefault("VISIONSEARCH_LOG_LEVEL", "ERROR")
    TABLE.extend(build())
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
