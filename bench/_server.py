"""What several benchmarks share: a visionsearch server in a child process, so that the load generator and
the server never share one interpreter's GIL (as with a real client on another machine, minus the network),
and the fashion-mnist-784 vectors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.datasets import fashion_mnist
from kernels import l2_normalize

ROOT = Path(__file__).resolve().parent.parent


class BenchServer:
    def __init__(
        self, *flags: str, data_dir: Path | None = None, root_certificates: bytes | None = None
    ) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="vs-bench-")
        data = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--address", "127.0.0.1:0", "--data-dir", str(data),
             "--no-default-collection", "--no-fsync", "--log-level", "WARNING", *flags],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.address = m.group(1)
        creds = grpc.ssl_channel_credentials(root_certificates) if root_certificates else None
        with grpc.secure_channel(self.address, creds) if creds else grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 120
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server never became healthy")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fashion(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmarks' fashion-mnist-784 set: the 60,000 training images as unit float32 rows (the base) and
    the first ``n_queries`` test images the same way (the queries)."""
    base = l2_normalize(fashion_mnist("train")[0].reshape(60000, -1).astype(np.float32))
    test = fashion_mnist("test")[0][:n_queries]
    return base, l2_normalize(test.reshape(len(test), -1).astype(np.float32))
