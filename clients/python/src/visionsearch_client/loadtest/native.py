"""The native engine (``engine="native"``, ``--engine native``): ``visionsearch-loadgen``, a C++ open-loop
generator built from clients/cpp with gRPC's async API.

This harness still checks the server and prepares the requests (the same ``workload.plan`` as the Python
engine); it writes them to a *plan file* that the binary replays, so both engines send the same bytes in the
same order. The binary writes one record per measured request (scheduled time, latency from the schedule,
send lag, kind, gRPC status) to a *records file* and prints its own CPU cost as one JSON line; the records go
through the same ``Recorder`` and ``build_report`` as the Python engine's, so the histogram, percentiles,
timeline, JSON and PNG are computed by one piece of code whichever engine ran.

File layouts (little-endian) are documented in clients/cpp/src/loadgen/plan.h and engine.h.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from visionsearch_client.client import DEFAULT_MAX_MESSAGE
from visionsearch_client.loadtest.config import LoadConfig, LoadTestError, UnreachableError
from visionsearch_client.loadtest.report import Recorder, Report, build_report, elapsed_from, generator_cost
from visionsearch_client.loadtest.workload import Planned

BINARY = "visionsearch-loadgen"
# Where the binary is looked for: this variable, then the repository's C++ build, then PATH.
LOADGEN_ENV = "VISIONSEARCH_LOADGEN"
# clients/python/src/visionsearch_client/loadtest/native.py -> the repository root (a source checkout).
REPO_BUILD = Path(__file__).resolve().parents[5] / "clients" / "cpp" / "build" / BINARY
FIX = "build it with `make clients` (scripts/setup_clients.sh) in the visionsearch repository"

PLAN_MAGIC, PLAN_VERSION = b"VSLGPLAN", 1
RECORDS_MAGIC = b"VSLGREC1"
RECORD = np.dtype(
    {
        "names": ["scheduled_ns", "latency_ns", "lag_ns", "kind", "status"],
        "formats": ["<i8", "<i8", "<i8", "u1", "u1"],
        "offsets": [0, 8, 16, 24, 25],
        "itemsize": 32,
    }
)
EXIT_UNREACHABLE = 3
STATUS_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}


class NativeEngineError(LoadTestError):
    """The native engine is not built, or it failed."""


def find_loadgen() -> Path:
    """The ``visionsearch-loadgen`` binary, or ``NativeEngineError`` saying how to build it."""
    given = os.environ.get(LOADGEN_ENV)
    if given:
        path = Path(given)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise NativeEngineError(f"{LOADGEN_ENV}={given} is not an executable file: {FIX}, or unset it")
    if REPO_BUILD.is_file() and os.access(REPO_BUILD, os.X_OK):
        return REPO_BUILD
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise NativeEngineError(
        f"the native engine needs {BINARY}, which is not built (looked at {REPO_BUILD}, "
        f"${LOADGEN_ENV} and PATH): {FIX}"
    )


def write_plan(planned: Sequence[Planned], path: str | Path) -> Path:
    """The plan file: each distinct method and payload once, then (kind, method, payload) per step."""
    methods: dict[str, int] = {}
    payloads: dict[bytes, int] = {}
    steps = bytearray()
    for p in planned:
        m = methods.setdefault(p.method, len(methods))
        b = payloads.setdefault(p.payload, len(payloads))
        steps += struct.pack("<BII", p.kind, m, b)
    out = bytearray(PLAN_MAGIC + struct.pack("<I", PLAN_VERSION))
    for table in ([m.encode() for m in methods], list(payloads)):
        out += struct.pack("<I", len(table))
        for item in table:
            out += struct.pack("<I", len(item)) + item
    out += struct.pack("<I", len(planned)) + steps
    target = Path(path)
    target.write_bytes(bytes(out))
    return target


def read_records(path: str | Path) -> np.ndarray:
    """The records file as a structured array of ``RECORD``."""
    data = Path(path).read_bytes()
    head = len(RECORDS_MAGIC) + 8
    if data[: len(RECORDS_MAGIC)] != RECORDS_MAGIC or len(data) < head:
        raise NativeEngineError(f"{path} is not a {BINARY} records file")
    (n,) = struct.unpack_from("<Q", data, len(RECORDS_MAGIC))
    if len(data) != head + n * RECORD.itemsize:
        raise NativeEngineError(f"{path}: {n} records announced, {len(data) - head} bytes follow")
    return np.frombuffer(data, dtype=RECORD, count=n, offset=head)


def recorder_from(records: np.ndarray) -> Recorder:
    recorder = Recorder()
    recorder.extend(
        records["scheduled_ns"] / 1e9,
        records["latency_ns"] / 1e9,
        records["lag_ns"] / 1e9,
        records["kind"],
        records["status"],
        {c: STATUS_NAMES.get(c, f"STATUS_{c}") for c in map(int, np.unique(records["status"]))},
    )
    return recorder


def command(binary: Path, config: LoadConfig, plan: Path, records: Path) -> list[str]:
    cmd = [
        str(binary),
        "--address", config.address,
        "--plan", str(plan),
        "--records", str(records),
        "--mode", config.mode,
        "--rate", repr(float(config.rate)),
        "--arrival", config.arrival,
        "--seed", str(config.seed),
        "--duration", repr(float(config.duration_s)),
        "--warmup", repr(float(config.warmup_s)),
        "--max-in-flight", str(config.max_in_flight),
        "--concurrency", str(config.concurrency),
        "--timeout", repr(float(config.timeout_s)),
        "--connect-timeout", repr(float(config.connect_timeout_s)),
        "--max-message-bytes", str(DEFAULT_MAX_MESSAGE),
    ]  # fmt: skip
    if config.max_requests is not None:
        cmd += ["--requests", str(config.max_requests)]
    if config.root_certificates:
        cmd += ["--ca", str(config.root_certificates)]
    elif config.tls:
        cmd.append("--tls")
    return cmd


def environment(config: LoadConfig) -> dict[str, str]:
    """The generator's environment: the API key goes there, where other users cannot read it (ps shows
    command lines)."""
    env = {k: v for k, v in os.environ.items() if k != "VISIONSEARCH_API_KEY"}
    if config.api_key:
        env["VISIONSEARCH_API_KEY"] = config.api_key
    return env


class NativeEngine:
    """A built binary and a folder for its plan and records files (one plan, reused by every run)."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="visionsearch-loadgen-")
        self.plan = Path(self._dir.name) / "plan.bin"

    @classmethod
    def find(cls) -> NativeEngine:
        return cls(find_loadgen())

    def load(self, planned: Sequence[Planned]) -> None:
        write_plan(planned, self.plan)

    def close(self) -> None:
        self._dir.cleanup()

    def run_blocking(self, config: LoadConfig) -> tuple[Recorder, dict[str, Any]]:
        """Run the binary once; returns its records and the JSON line it printed (its cost)."""
        records = Path(self._dir.name) / "records.bin"
        # The run, plus draining the last requests, plus connecting, plus room for a loaded machine.
        limit = config.warmup_s + config.duration_s + config.timeout_s + config.connect_timeout_s + 60
        cmd = command(self.binary, config, self.plan, records)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=limit, check=False, env=environment(config)
            )
        except subprocess.TimeoutExpired:
            raise NativeEngineError(f"{BINARY} did not finish within {limit:g} s") from None
        message = proc.stderr.strip()
        if proc.returncode == EXIT_UNREACHABLE:
            raise UnreachableError(message)
        if proc.returncode != 0:
            raise NativeEngineError(f"{BINARY} failed (exit {proc.returncode}): {message[-2000:]}")
        try:
            summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise NativeEngineError(f"{BINARY} printed no summary: {proc.stdout[-500:]!r}") from None
        return recorder_from(read_records(records)), summary

    async def run(self, config: LoadConfig) -> Report:
        recorder, summary = await asyncio.to_thread(self.run_blocking, config)
        cost = generator_cost(summary["user_s"], summary["sys_s"], summary["wall_s"], summary["sent"])
        return build_report(
            config,
            recorder,
            elapsed_from(recorder, config),
            offered_rate=config.rate if config.mode == "open" else None,
            engine="native",
            generator_cpu=cost,
        )


__all__ = [
    "BINARY",
    "LOADGEN_ENV",
    "NativeEngine",
    "NativeEngineError",
    "find_loadgen",
    "read_records",
    "recorder_from",
    "write_plan",
]
