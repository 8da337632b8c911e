"""Shared fixtures: real servers on port 0 reached over real channels, real models and photos.

Loading MobileNetV2 and the word vectors takes seconds, so one ``Services`` is built per test session and
shared by the in-process servers; tests that need their own data folder or process start their own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from visionsearch_client import Client

from server.app import Running, create_server
from server.config import Config
from server.services import Services

ROOT = Path(__file__).resolve().parent.parent
LION = Path("/usr/share/tuxpaint/stamps/animals/mammals/cats/lion.png")
# Small enough to index in seconds, large enough that clothing competes with animals for the top ranks.
TEST_FASHION_SAMPLE = 60


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return Config(
        address="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("data"),
        workers=8,
        fashion_sample=TEST_FASHION_SAMPLE,
        fsync=False,
        grace_seconds=2.0,
    )


@pytest.fixture(scope="session")
def services(base_config: Config) -> Iterator[Services]:
    s = Services.start(base_config)
    yield s
    s.close()


@pytest.fixture(scope="session")
def server(base_config: Config, services: Services) -> Iterator[Running]:
    running = create_server(base_config, services)
    yield running
    running.server.stop(0).wait()


@pytest.fixture(scope="session")
def client(server: Running) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture
def fresh_name(request: pytest.FixtureRequest) -> str:
    """A collection name unique to the test."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:64]


@pytest.fixture
def small_server(base_config: Config, services: Services, tmp_path: Path) -> Iterator[tuple[Running, Client]]:
    """A server with its own data folder, no default collection and a 1 MiB message limit."""
    config = replace(base_config, data_dir=tmp_path, default_collection=False, max_message_bytes=1024 * 1024)
    own = services.with_store(config)
    running = create_server(config, own)
    with Client(f"127.0.0.1:{running.port}", timeout=60, max_message_bytes=64 * 1024 * 1024) as c:
        yield running, c
    running.server.stop(0).wait()
    own.close()


@pytest.fixture(scope="module")
def small_server_module(
    base_config: Config, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Client]]:
    """``small_server``, shared by the tests of one module."""
    config = replace(
        base_config, data_dir=tmp_path_factory.mktemp("module"), default_collection=False,
        max_message_bytes=1024 * 1024,
    )  # fmt: skip
    own = services.with_store(config)
    running = create_server(config, own)
    with Client(f"127.0.0.1:{running.port}", timeout=60, max_message_bytes=64 * 1024 * 1024) as c:
        yield running, c
    running.server.stop(0).wait()
    own.close()


class ServerProcess:
    """``python -m server`` in a child process, for tests about signals and crashes."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--address", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--no-default-collection", "--log-level", "WARNING", *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the server listens (or dies)
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(
                f"server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.address = m.group(1)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn_server() -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, data_dir: Path, *extra: str) -> None:
            super().__init__(data_dir, *extra)
            started.append(self)

    yield Tracked
    for p in started:
        p.stop()


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)
