"""Black-box probe of the operator-facing findings of issue 10 against the server of one checkout.

Starts ``python -m server`` of the checkout given (cwd = the checkout, so its ``server``, ``kernels`` and
``embedder`` packages are the ones run) in child processes with their own data folders, talks to them only
over raw gRPC channels with the generated ``visionsearch.v1`` stubs (fields and RPCs both API versions have,
unless a finding is about a new one), damages their files the way a bad disk or an operator would, and prints
one line per finding:

    finding-id | what happened | PASS/FAIL

PASS is the fixed behaviour. A crash, hang or INTERNAL of the server under probe is recorded as FAIL; a
finding that could not be set up is recorded as ERROR with the reason. A JSON summary goes to ``--out``.

    python bench/probe_findings.py --checkout /work/before --out /tmp/probe-before.json
    python bench/probe_findings.py --checkout /work/main --out bench/results/probe_findings.json

Runs as root (findings 1 and 1b mount an 8 MiB tmpfs). Findings that could exhaust the machine's memory on
the old server (a 1x30,000 PNG, a 65,536-d GetItems) are left out. Takes two to four minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

LION = Path("/usr/share/tuxpaint/stamps/animals/mammals/cats/lion.png")
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    # Room for long error messages in the trailers: finding 9 measures what the server sends, not what
    # the client's default 8 KiB metadata limit would let through.
    ("grpc.max_metadata_size", 16 << 20),
]
SERVING = health_pb2.HealthCheckResponse.SERVING

# ------------------------------------------------------------------ results


@dataclass
class Result:
    id: str
    title: str
    what: str
    passed: bool | None  # None: could not be set up (ERROR)
    details: dict[str, Any] = field(default_factory=dict)
    # How far each server log had got when the result was made: run_one attributes to each result the
    # exceptions the servers logged since the previous one.
    log_mark: dict[str, int] = field(default_factory=lambda: log_offsets(), repr=False)

    @property
    def verdict(self) -> str:
        return "ERROR" if self.passed is None else "PASS" if self.passed else "FAIL"


def line(r: Result) -> str:
    return f"{r.id} | {r.what} | {r.verdict}"


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``python -m server`` of the checkout under probe, in its own process group, logging to a file."""

    started: ClassVar[list[Server]] = []  # every server of the run, so that none outlives the probe
    counter = 0

    def __init__(self, checkout: Path, data_dir: Path, logs: Path, *extra: str) -> None:
        Server.counter += 1
        self.name = f"server-{Server.counter}"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = logs / f"{self.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONSEARCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.cmd = [
            sys.executable, "-m", "server", "--address", self.address, "--data-dir", str(data_dir),
            "--no-default-collection", "--embed-processes", "0", "--workers", "8",
            "--log-level", "INFO", "--grace-seconds", "2", *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            log.write((" ".join(self.cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        Server.started.append(self)

    def ready(self, timeout: float = 180) -> bool:
        """Wait until the health check says SERVING; False if the process died or it never did."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        return False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_description(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exit code {rc}"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no snapshot at exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM, then the exit code (None if it did not exit in time, after which it is killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, chars: int = 1200) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def interesting_log(self, chars: int = 600) -> str:
        """The last traceback or error lines of the log, for the report."""
        text = self.tail(20000)
        for marker in ("Traceback", "Fatal Python error", "Segmentation", "ERROR", "CRITICAL"):
            at = text.rfind(marker)
            if at >= 0:
                return text[at : at + chars]
        return text[-chars:]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)


@contextlib.contextmanager
def serving(
    checkout: Path, data_dir: Path, logs: Path, *extra: str, timeout: float = 180
) -> Iterator[Server]:
    """A server that is SERVING, killed on the way out (unless the body stopped it)."""
    srv = Server(checkout, data_dir, logs, *extra)
    try:
        if not srv.ready(timeout):
            raise ServerDown(srv, "did not become ready")
        yield srv
    finally:
        if srv.alive:
            srv.kill()


class ServerDown(Exception):
    def __init__(self, srv: Server, when: str) -> None:
        self.srv = srv
        super().__init__(f"server {when}: {srv.exit_description()}; log: {srv.interesting_log()!r}")


class Stubs:
    def __init__(self, ch: grpc.Channel) -> None:
        self.ch = ch
        self.collections = pb_grpc.CollectionServiceStub(ch)
        self.search = pb_grpc.SearchServiceStub(ch)
        self.embed = pb_grpc.EmbedServiceStub(ch)
        self.tag = pb_grpc.TagServiceStub(ch)
        self.health = health_pb2_grpc.HealthStub(ch)


@dataclass
class Outcome:
    code: str  # "OK" or a status code name
    details: str = ""
    response: Any = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def short(self, n: int = 160) -> str:
        d = self.details if len(self.details) <= n else self.details[:n] + "..."
        return self.code if self.ok else f"{self.code} ({d})"


def call(method: Callable[..., Any], request: Any, timeout: float = 60) -> Outcome:
    t0 = time.monotonic()
    try:
        resp = method(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        return Outcome(
            code.name if code is not None else "NONE", e.details() or "", None, time.monotonic() - t0
        )
    return Outcome("OK", "", resp, time.monotonic() - t0)


def f32(v: np.ndarray) -> pb.Vector:
    return pb.Vector(f32=np.ascontiguousarray(v, dtype="<f4").tobytes())


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def create(
    s: Stubs,
    name: str,
    dim: int,
    *,
    metric: pb.Metric.ValueType = pb.METRIC_COSINE,
    index: pb.IndexType.ValueType = pb.INDEX_UNSPECIFIED,
    embedder: str = "",
    joint: str = "",
) -> Outcome:
    cfg = pb.CollectionConfig(name=name, dim=dim, metric=metric, index=index, embedder=embedder, joint=joint)
    return call(s.collections.CreateCollection, pb.CreateCollectionRequest(config=cfg))


def upsert(s: Stubs, name: str, ids: list[str], vectors: np.ndarray, timeout: float = 60) -> Outcome:
    items = [pb.Item(id=i, vector=f32(v)) for i, v in zip(ids, vectors, strict=True)]
    return call(s.collections.Upsert, pb.UpsertRequest(collection=name, items=items), timeout)


def count(s: Stubs, name: str) -> Outcome:
    return call(s.collections.Count, pb.CountRequest(collection=name))


def get_items(
    s: Stubs, name: str, ids: list[str], with_vector: bool = False
) -> tuple[Outcome, dict[str, bytes]]:
    """GetItems in chunks of 1,000; the first failure is returned with what was read before it."""
    found: dict[str, bytes] = {}
    for start in range(0, len(ids), 1000):
        out = call(
            s.collections.GetItems,
            pb.GetItemsRequest(collection=name, ids=ids[start : start + 1000], with_vector=with_vector),
        )
        if not out.ok:
            return out, found
        for item in out.response.items:
            found[item.id] = item.vector.f32
    return Outcome("OK"), found


def require(out: Outcome, what: str) -> Any:
    if not out.ok:
        raise SetupFailed(f"{what}: {out.short(300)}")
    return out.response


class SetupFailed(Exception):
    """The probe could not set up the situation a finding is about (not a verdict on the server)."""


# ------------------------------------------------------------------ the files of a collection


def collection_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "collections" / name


def generation_files(folder: Path, stem: str, suffix: str) -> list[Path]:
    """``stem-G.suffix`` files of a collection folder, highest generation last."""
    found = []
    for p in folder.glob(f"{stem}-*.{suffix}"):
        g = p.name[len(stem) + 1 : -len(suffix) - 1]
        if g.isdigit():
            found.append((int(g), p))
    return [p for _, p in sorted(found)]


def current_generation(folder: Path) -> int | None:
    try:
        return int((folder / "CURRENT").read_text().strip())
    except (OSError, ValueError):
        return None


def flip(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ context shared by the findings


@dataclass
class Probe:
    checkout: Path
    work: Path  # temporary folder of this run
    logs: Path
    storm_seconds: float
    mounts: list[Path] = field(default_factory=list)
    _general: Server | None = None
    _general_joint: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fresh(self, label: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.work))

    def server(self, data_dir: Path, *extra: str) -> contextlib.AbstractContextManager[Server]:
        return serving(self.checkout, data_dir, self.logs, *extra)

    def general(self) -> Server:
        """One server for the findings about single requests (restarted, on a fresh folder, if it died)."""
        with self._lock:
            if self._general is None or not self._general.alive:
                base = self.fresh("general")
                data = base / "data"
                (data / "heads").mkdir(parents=True)  # where trained heads live; finding 10 paths out of it
                srv = Server(self.checkout, data, self.logs)
                if not srv.ready():
                    raise ServerDown(srv, "(general) did not become ready")
                self._general = srv
                self._general_joint = False
            return self._general

    def joint_collection(self) -> tuple[Server, str]:
        """The general server with collection "j": mobilenet_v2 image space, conse:spacy joint space, items
        x0..x9 upserted as vectors."""
        srv = self.general()
        with self._lock:
            if not self._general_joint:
                with srv.channel() as ch:
                    s = Stubs(ch)
                    require(
                        create(s, "j", 1280, embedder="mobilenet_v2", joint="conse:spacy"),
                        "CreateCollection j (mobilenet_v2 + conse:spacy)",
                    )
                    feats = np.abs(np.random.default_rng(7).standard_normal((10, 1280))).astype(np.float32)
                    require(upsert(s, "j", [f"x{i}" for i in range(10)], feats, 180), "Upsert into j")
                self._general_joint = True
            return srv, "j"

    def mount_tmpfs(self, size: str) -> Path:
        disk = self.fresh("disk")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
        self.mounts.append(disk)
        return disk

    def unmount(self, disk: Path) -> None:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        if disk in self.mounts:
            self.mounts.remove(disk)

    def close(self) -> None:
        for srv in Server.started:
            if srv.alive:
                srv.kill()
        for disk in list(self.mounts):
            self.unmount(disk)


# ------------------------------------------------------------------ 1: a full disk

DISK_DIM = 64


def fill_disk(path: Path, leave: int) -> int:
    """Write ``path`` until the filesystem is full, then give back ``leave`` bytes; returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = os.urandom(1 << 16)
    size = 0
    try:
        while True:
            try:
                size += os.write(fd, chunk)
            except OSError:
                break
        size = max(0, size - leave)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return size


def upsert_until_refused(s: Stubs, name: str, prefix: str, seed: int) -> tuple[list[str], list[str], Outcome]:
    """Batches of 50 until one is refused: (acknowledged ids, refused ids, the refusal). A batch is a log
    record of about 13 KB, larger than a buffered file's 8 KiB buffer, so it goes to the disk in one write
    that a full disk can cut short."""
    acked: list[str] = []
    for n in range(2000):
        ids = [f"{prefix}{n}-{j}" for j in range(50)]
        out = upsert(s, name, ids, unit_vectors(50, DISK_DIM, seed + n), 30)
        if not out.ok:
            return acked, ids, out
        acked += ids
    raise SetupFailed("the disk never filled")


def finding_1(p: Probe) -> list[Result]:
    title = "disk full: the refused upsert's status; acknowledged writes after space is freed survive kill -9"
    disk = p.mount_tmpfs("8m")
    try:
        data = disk / "data"
        details: dict[str, Any] = {}
        with p.server(data) as srv, srv.channel() as ch:
            s = Stubs(ch)
            require(create(s, "c", DISK_DIM), "CreateCollection")
            details["filler_bytes"] = fill_disk(disk / "filler", 512 << 10)
            acked, refused, refusal = upsert_until_refused(s, "c", "a", 0)
            details["acknowledged_before_full"] = len(acked)
            details["refusal"] = refusal.short(300)
            still_full = []
            for k in range(3):  # still full: acknowledged or refused, never INTERNAL
                ids = [f"more{k}-{j}" for j in range(50)]
                out = upsert(s, "c", ids, unit_vectors(50, DISK_DIM, 1000 + k), 30)
                still_full.append(out.code)
                if out.ok:
                    acked += ids
                else:
                    refused += ids
            details["while_still_full"] = still_full
            (disk / "filler").unlink()  # the operator frees space
            late: list[str] = []
            late_codes: Counter[str] = Counter()
            for k in range(10):
                ids = [f"late{k}-{j}" for j in range(50)]
                out = upsert(s, "c", ids, unit_vectors(50, DISK_DIM, 2000 + k), 30)
                late_codes[out.code] += 1
                if out.ok:
                    late += ids
            details["late_upserts"] = dict(late_codes)
            deleted = acked[0]
            out = call(s.collections.Delete, pb.DeleteRequest(collection="c", ids=[deleted]))
            details["late_delete"] = out.short()
            delete_acked = out.ok and out.response.deleted == 1
            expect = [i for i in acked + late if not (delete_acked and i == deleted)]
            c = count(s, "c")
            details["count_before_kill"] = int(c.response.count) if c.ok else c.short()
            srv.kill()
        with p.server(data) as again, again.channel() as ch:
            s = Stubs(ch)
            c = count(s, "c")
            out, found = get_items(s, "c", expect)
            _, ghost = get_items(s, "c", ([deleted] if delete_acked else []) + refused)
            details["count_after_restart"] = int(c.response.count) if c.ok else c.short()
            details["expected_after_restart"] = len(expect)
        missing = [i for i in expect if i not in found]
        late_lost = sum(i in late for i in missing)
        deleted_back = delete_acked and deleted in ghost
        refused_back = sum(i in ghost for i in refused)
        details.update(
            missing=len(missing), missing_sample=missing[:5], missing_written_after_space_freed=late_lost,
            deleted_item_back=deleted_back, refused_items_present=refused_back,
        )  # fmt: skip
        code_ok = refusal.code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
        all_codes_ok = code_ok and all(x in ("OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE") for x in still_full)
        durable = out.ok and not missing and not ghost and c.ok and c.response.count == len(expect)
        what = (
            f"refused upsert -> {refusal.code}; after freeing space {len(late)}/500 upserts and the delete "
            f"acknowledged; after kill -9 + restart {len(expect) - len(missing)}/{len(expect)} acknowledged "
            "items present"
            + (
                f" (of the {len(missing)} lost, {late_lost} were written after space was freed)"
                if missing
                else ""
            )
            + f", deleted item {'back' if deleted_back else 'absent'}, {refused_back} refused items present"
        )
        if not out.ok:
            what += f"; GetItems after restart: {out.short()}"
        return [Result("1", title, what, all_codes_ok and durable, details)]
    finally:
        p.unmount(disk)


def finding_1b(p: Probe) -> list[Result]:
    title = "SIGTERM after a disk-full episode (disk still full): exit code"
    disk = p.mount_tmpfs("8m")
    try:
        data = disk / "data"
        details: dict[str, Any] = {}
        with p.server(data) as srv, srv.channel() as ch:
            s = Stubs(ch)
            require(create(s, "c", DISK_DIM), "CreateCollection")
            fill_disk(disk / "filler", 512 << 10)
            acked, _, refusal = upsert_until_refused(s, "c", "a", 0)
            details["refusal"] = refusal.short()
            rc = srv.terminate(60)
            details["exit"] = srv.exit_description() if rc is not None else "did not exit in 60 s"
            details["log"] = srv.interesting_log(400)
        (disk / "filler").unlink()
        with p.server(data) as again, again.channel() as ch:
            c = count(Stubs(ch), "c")
            details["count_after_restart"] = int(c.response.count) if c.ok else c.short()
            details["acknowledged"] = len(acked)
        what = f"SIGTERM on a full disk -> {details['exit']}; restart serves {details['count_after_restart']}"
        what += f" of {len(acked)} acknowledged items"
        return [Result("1b", title, what, rc == 0, details)]
    finally:
        p.unmount(disk)


# ------------------------------------------------------------------ 2: a flipped byte in the middle of a log


def finding_2(p: Probe) -> list[Result]:
    title = "one flipped byte in the middle of a WAL"
    data = p.fresh("f2") / "data"
    with p.server(data) as srv, srv.channel() as ch:
        s = Stubs(ch)
        for name in ("good", "bad"):
            require(create(s, name, 8), f"CreateCollection {name}")
        vecs = unit_vectors(100, 8, 2)
        for i in range(100):
            require(upsert(s, "bad", [f"i{i}"], vecs[i : i + 1]), "Upsert")
        require(upsert(s, "good", [f"g{i}" for i in range(5)], unit_vectors(5, 8, 3)), "Upsert good")
        srv.kill()
    logs = generation_files(collection_dir(data, "bad"), "wal", "log")
    if not logs:
        raise SetupFailed(f"no wal-*.log in {collection_dir(data, 'bad')}")
    wal = max(logs, key=lambda q: q.stat().st_size)
    size = wal.stat().st_size
    flip(wal, size // 2, 0xFF)
    damaged = wal.read_bytes()
    details: dict[str, Any] = {"wal": wal.name, "wal_bytes": size, "flipped_at": size // 2}
    with p.server(data) as again, again.channel() as ch:
        s = Stubs(ch)
        bad = count(s, "bad")
        bad_get = call(s.collections.GetCollection, pb.GetCollectionRequest(name="bad"))
        good = count(s, "good")
        hit = call(
            s.search.Search, pb.SearchRequest(collection="good", vector=f32(unit_vectors(1, 8, 3)[0]), k=1)
        )
        listed = call(s.collections.ListCollections, pb.ListCollectionsRequest())
        if listed.ok:
            details["listed"] = [
                {"name": c.config.name, "count": c.count, "state": c.state, "reason": c.state_reason[:200]}
                for c in listed.response.collections
            ]
    after = wal.read_bytes() if wal.exists() else b""
    details.update(
        count_bad=bad.short(300) if not bad.ok else int(bad.response.count),
        get_collection_bad=bad_get.short(300),
        count_good=good.short() if not good.ok else int(good.response.count),
        search_good=hit.short(),
        wal_bytes_after=len(after),
        wal_unchanged=after == damaged,
    )
    serves_good = good.ok and good.response.count == 5 and hit.ok and len(hit.response.hits) == 1
    what = f"opened with {bad.response.count} of 100 items" if bad.ok else f"Count -> {bad.code}"
    what += f"; WAL {size:,} -> {len(after):,} bytes" + ("" if after == damaged else " (rewritten)")
    what += "; other collection serves" if serves_good else f"; other collection: {good.short()}"
    passed = bad.code == "DATA_LOSS" and serves_good and after == damaged
    return [Result("2", title, what, passed, details)]


# ------------------------------------------------------------------ 3: a damaged HNSW graph


def finding_3(p: Probe) -> list[Result]:
    title = "256 corrupt bytes in the saved HNSW graph"
    data = p.fresh("f3") / "data"
    x = np.random.default_rng(2).standard_normal((1200, 16)).astype(np.float32)
    details: dict[str, Any] = {}
    with p.server(data) as srv, srv.channel() as ch:
        s = Stubs(ch)
        require(create(s, "g", 16, index=pb.INDEX_HNSW), "CreateCollection g (HNSW)")
        require(create(s, "good", 8), "CreateCollection good")
        require(upsert(s, "good", [f"g{i}" for i in range(5)], unit_vectors(5, 8, 3)), "Upsert good")
        for start in range(0, 1200, 200):
            require(
                upsert(s, "g", [f"i{n}" for n in range(start, start + 200)], x[start : start + 200]), "Upsert"
            )
        deadline = time.monotonic() + 240
        in_use = ""
        while time.monotonic() < deadline:
            info = require(
                call(s.collections.GetCollection, pb.GetCollectionRequest(name="g")), "GetCollection"
            )
            in_use = info.index_in_use
            if in_use.startswith("hnsw") and "build" not in in_use:
                break
            time.sleep(0.5)
        else:
            raise SetupFailed(f"the HNSW index was not built in 240 s: {in_use!r}")
        details["index_before"] = in_use
        rc = srv.terminate(120)  # a clean stop saves the snapshot and the graph with it
        details["first_stop"] = srv.exit_description() if rc is not None else "did not exit"
    graphs = generation_files(collection_dir(data, "g"), "hnsw", "usearch")
    if not graphs:
        raise SetupFailed(
            f"no hnsw-*.usearch saved: {sorted(q.name for q in collection_dir(data, 'g').iterdir())}"
        )
    graph = graphs[-1]
    details.update(graph=graph.name, graph_bytes=graph.stat().st_size)
    # The graph is built by several threads, so its layout differs from run to run and so does what one
    # damaged region does; several regions, each on a fresh copy of the folder, make the probe repeatable.
    trials = [
        _graph_trial(p, data, graph.name, where, seed) for seed, where in enumerate((2, 3, 1.5, 4, 1.25), 3)
    ]
    details["trials"] = trials
    tally = Counter(t["outcome"] for t in trials)
    what = f"{len(trials)} trials (256 random bytes at a different offset each): " + ", ".join(
        f"{n}x {o}" for o, n in tally.most_common()
    )
    internal = sum(t.get("search_codes", {}).get("INTERNAL", 0) for t in trials)
    if internal:
        what += f"; {internal} searches answered INTERNAL"
    if all(t["graph_reported_damaged"] for t in trials):
        what += "; the server logged the saved graph as damaged each time and rebuilt it"
    passed = all(t["passed"] for t in trials)
    return [Result("3", title, what, passed, details)]


def _graph_trial(p: Probe, base: Path, graph_name: str, divisor: float, seed: int) -> dict[str, Any]:
    """Copy ``base``, overwrite 256 bytes of the graph at ``size / divisor``, restart, search 50 times."""
    data = p.fresh("f3-trial") / "data"
    shutil.copytree(base, data)
    graph = collection_dir(data, "g") / graph_name
    raw = bytearray(graph.read_bytes())
    at = int(len(raw) / divisor)
    raw[at : at + 256] = np.random.default_rng(seed).integers(0, 256, 256, dtype=np.uint8).tobytes()
    graph.write_bytes(bytes(raw))
    trial: dict[str, Any] = {"corrupted_at": at, "seed": seed}
    srv = Server(p.checkout, data, p.logs)
    try:
        if not srv.ready():
            trial.update(outcome=f"server did not start ({srv.exit_description()})", passed=False)
            trial.update(log=srv.interesting_log(400), graph_reported_damaged=False)
            return trial
        with srv.channel() as ch:
            s = Stubs(ch)
            info = call(s.collections.GetCollection, pb.GetCollectionRequest(name="g"))
            trial["index_in_use"] = info.short(300) if not info.ok else info.response.index_in_use
            queries = np.random.default_rng(seed + 100).standard_normal((50, 16)).astype(np.float32)
            codes: Counter[str] = Counter()
            short_results = 0
            first_error = ""
            for n, q in enumerate(queries):
                k = 100 if n % 5 == 4 else 10
                out = call(s.search.Search, pb.SearchRequest(collection="g", vector=f32(q), k=k), 60)
                codes[out.code] += 1
                short_results += out.ok and len(out.response.hits) != k
                if not out.ok and not first_error:
                    first_error = out.short(200)
                if not srv.alive:
                    break
            good = count(s, "good")
        if codes.get("OK", 0) != sum(codes.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                srv.proc.wait(15)  # a crashing process may take a moment to be gone
        alive = srv.alive
        mentions = [ln[:300] for ln in srv.tail(20000).splitlines() if "hnsw-" in ln or "saved index" in ln]
        trial.update(
            search_codes=dict(codes), short_results=short_results, first_error=first_error,
            good=good.short() if not good.ok else int(good.response.count), alive_after=alive,
            log_on_the_graph=mentions[:2], graph_reported_damaged=any("damaged" in ln for ln in mentions),
        )  # fmt: skip
        if not alive:
            trial.update(outcome=f"server died ({srv.exit_description()})", passed=False)
        elif codes.get("DATA_LOSS") == sum(codes.values()):
            trial.update(outcome="collection DATA_LOSS", passed=good.ok)
        elif codes.get("OK") == sum(codes.values()) and not short_results:
            trial.update(outcome="every search served", passed=good.ok)
        else:
            bad = ", ".join(f"{c}" for c in codes if c != "OK")
            trial.update(outcome=f"searches failed with {bad}", passed=False)
        return trial
    finally:
        if srv.alive:
            srv.kill()


# ------------------------------------------------------------------ 4: a damaged snapshot


def _prepare_snapshots(p: Probe) -> tuple[Path, dict[str, bytes]]:
    """A data folder whose collection "dmg" went through several snapshots and has log records after the
    last one, and a collection "good"; no clean shutdown. Returns the folder and dmg's items (id -> vector
    bytes, as the server returned them)."""
    data = p.fresh("f4-base") / "data"
    with p.server(data, "--snapshot-wal-bytes", "2048") as srv, srv.channel() as ch:
        s = Stubs(ch)
        require(create(s, "good", 8), "CreateCollection good")
        require(upsert(s, "good", [f"g{i}" for i in range(5)], unit_vectors(5, 8, 3)), "Upsert good")
        require(create(s, "dmg", 8, metric=pb.METRIC_INNER_PRODUCT), "CreateCollection dmg")
        vecs = np.random.default_rng(5).standard_normal((100, 8)).astype(np.float32)
        folder = collection_dir(data, "dmg")
        n = 0
        while n < 90 and not (n >= 60 and (current_generation(folder) or 0) >= 2):
            require(upsert(s, "dmg", [f"i{n}"], vecs[n : n + 1]), "Upsert")
            if n in (20, 50):
                require(
                    call(s.collections.Delete, pb.DeleteRequest(collection="dmg", ids=[f"i{n - 5}"])),
                    "Delete",
                )
            n += 1
        # A few records after the last snapshot, so that the log of the generation in force is not empty.
        for m in range(n, n + 3):
            require(upsert(s, "dmg", [f"i{m}"], vecs[m : m + 1]), "Upsert")
        out, model = get_items(s, "dmg", [f"i{m}" for m in range(100)], with_vector=True)
        require(out, "GetItems dmg")
        srv.kill()
    gen = current_generation(folder)
    if gen is None or gen < 1 or not generation_files(folder, "vectors", "npy"):
        raise SetupFailed(f"no snapshot was written: {sorted(q.name for q in folder.iterdir())}")
    return data, model


def _check_damaged(p: Probe, data: Path, model: dict[str, bytes], rid: str, title: str) -> Result:
    details: dict[str, Any] = {"files": sorted(q.name for q in collection_dir(data, "dmg").iterdir())}
    srv = Server(p.checkout, data, p.logs)
    try:
        if not srv.ready():
            details["log"] = srv.interesting_log()
            return Result(rid, title, f"server did not start: {srv.exit_description()}", False, details)
        with srv.channel() as ch:
            s = Stubs(ch)
            good = count(s, "good")
            c = count(s, "dmg")
            out, got = get_items(s, "dmg", sorted(model), with_vector=True)
            info = call(s.collections.GetCollection, pb.GetCollectionRequest(name="dmg"))
        serves_good = good.ok and good.response.count == 5
        details.update(
            good=good.short() if not good.ok else int(good.response.count),
            count=c.short(300) if not c.ok else int(c.response.count),
            get_collection=info.short(300) if not info.ok else info.response.state_reason[:300],
            expected=len(model),
        )
        if not out.ok:
            what = f"damaged collection -> {out.code}"
            if out.code != "DATA_LOSS":
                what += f" ({out.details[:100]})"
            passed = out.code == "DATA_LOSS" and serves_good
        else:
            missing = [i for i in model if i not in got]
            wrong = [i for i in model if i in got and got[i] != model[i]]
            extra = c.ok and c.response.count != len(model)
            details.update(missing=len(missing), wrong_vectors=wrong[:10], count_mismatch=bool(extra))
            if not missing and not wrong and not extra:
                what = f"recovered: all {len(model)} items, same vectors"
                passed = serves_good
            else:
                what = (
                    f"served silently: {len(got)}/{len(model)} items, {len(wrong)} wrong vectors, Count "
                    f"{details['count']}"
                )
                passed = False
        what += "; other collection serves" if serves_good else f"; other collection: {details['good']}"
        return Result(rid, title, what, passed, details)
    finally:
        if srv.alive:
            srv.kill()


def _leftover_folder(p: Probe) -> Result:
    title = "CreateCollection over a leftover empty folder (present at start, and appearing while running)"
    data = p.fresh("f4-left") / "data"
    (data / "collections" / "left").mkdir(parents=True)
    details: dict[str, Any] = {}
    with p.server(data) as srv, srv.channel() as ch:
        s = Stubs(ch)
        (data / "collections" / "over").mkdir()
        outs = {name: create(s, name, 8) for name in ("left", "over")}
        for name, out in outs.items():
            details[name] = out.short(300)
            if out.ok:
                u = upsert(s, name, ["a"], unit_vectors(1, 8, 1))
                details[f"{name}_upsert"] = u.short()
    allowed = ("OK", "ALREADY_EXISTS", "FAILED_PRECONDITION")
    passed = all(o.code in allowed for o in outs.values())
    what = ", ".join(f"{n} -> {o.code}" for n, o in outs.items())
    return Result("4-leftover-folder", title, what, passed, details)


def finding_4(p: Probe) -> list[Result]:
    base, model = _prepare_snapshots(p)
    folder0 = collection_dir(base, "dmg")
    gen = current_generation(folder0)
    assert gen is not None

    def vectors_file(f: Path) -> Path:
        return f / f"vectors-{gen}.npy"

    def truncate_vectors(f: Path) -> None:
        v = vectors_file(f)
        v.write_bytes(v.read_bytes()[: v.stat().st_size // 2])

    def flip_vectors(f: Path) -> None:
        v = vectors_file(f)
        flip(v, 128 + (v.stat().st_size - 128) // 2, 0x01)  # one bit of a float in the middle of the rows

    def garbage_current(f: Path) -> None:
        (f / "CURRENT").write_bytes(b"\x00\xffgarbage")

    damage: dict[str, tuple[str, Callable[[Path], None]]] = {
        "truncated-vectors": (f"vectors-{gen}.npy cut to half its size", truncate_vectors),
        "garbage-CURRENT": ("CURRENT holds garbage bytes", garbage_current),
        "deleted-CURRENT": ("CURRENT deleted", lambda f: (f / "CURRENT").unlink()),
        "deleted-config": ("config.json deleted", lambda f: (f / "config.json").unlink()),
        "flipped-vector-bit": (f"one bit flipped in the rows of vectors-{gen}.npy", flip_vectors),
    }
    results = []
    for key, (title, apply) in damage.items():
        data = p.fresh(f"f4-{key}") / "data"
        shutil.copytree(base, data)
        apply(collection_dir(data, "dmg"))
        r = _check_damaged(p, data, model, f"4-{key}", f"damaged snapshot: {title}")
        r.details["generation"] = gen
        results.append(r)
    results.append(_leftover_folder(p))
    return results


# ------------------------------------------------------------------ 5: a 1 x 20,000,000 strip


def finding_5(p: Probe) -> list[Result]:
    title = "Embed of a 1x20,000,000 PNG strip (a 20 Mpx image under the pixel limit)"
    buf = io.BytesIO()
    Image.new("1", (1, 20_000_000)).save(buf, "PNG")
    png = buf.getvalue()
    srv = p.general()
    with srv.channel() as ch:
        s = Stubs(ch)
        out = call(s.embed.Embed, pb.EmbedRequest(image=png), 180)
        sane = call(s.embed.Embed, pb.EmbedRequest(image=LION.read_bytes()), 180)
    details = {"png_bytes": len(png), "embed": out.short(300), "seconds": round(out.seconds, 2),
               "lion_after": sane.short(), "server": srv.exit_description()}  # fmt: skip
    what = f"Embed -> {out.short(120)} in {out.seconds:.1f} s"
    return [Result("5", title, what, out.code == "INVALID_ARGUMENT", details)]


# ------------------------------------------------------------------ 6: races


def finding_6(p: Probe) -> list[Result]:
    title = (
        "upserts, deletes and reads racing DropCollection/CreateCollection/UpdateCollection "
        f"({p.storm_seconds:.0f} s)"
    )
    data = p.fresh("f6") / "data"
    names = ["storm0", "storm1", "storm2"]
    outcomes: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    with p.server(data) as srv:

        def worker(seed: int, role: str) -> None:
            rng = np.random.default_rng(seed)
            vecs = rng.standard_normal((64, 8)).astype(np.float32)
            with srv.channel() as ch:
                s = Stubs(ch)

                def record(what: str, method: Callable[..., Any], req: Any) -> None:
                    out = call(method, req, 30)
                    with lock:
                        outcomes[f"{what} {out.code}"] += 1
                        if out.code in ("INTERNAL", "UNKNOWN"):
                            bad[f"{what}: {out.short(200)}"] += 1

                while not stop.is_set():
                    name = names[int(rng.integers(3))]
                    if role == "writer":
                        ids = [f"i{int(rng.integers(200))}" for _ in range(int(rng.integers(1, 9)))]
                        items = [
                            pb.Item(id=i, vector=f32(vecs[int(rng.integers(64))]), payload={"s": str(seed)})
                            for i in ids
                        ]
                        record("upsert", s.collections.Upsert, pb.UpsertRequest(collection=name, items=items))
                        record("delete", s.collections.Delete, pb.DeleteRequest(collection=name, ids=ids[:2]))
                    elif role == "reader":
                        record(
                            "search",
                            s.search.Search,
                            pb.SearchRequest(collection=name, vector=f32(vecs[0]), k=5),
                        )
                        record(
                            "get", s.collections.GetItems,
                            pb.GetItemsRequest(collection=name, ids=["i1", "i2"], with_vector=True),
                        )  # fmt: skip
                        record("count", s.collections.Count, pb.CountRequest(collection=name))
                    elif role == "dropper":
                        record("drop", s.collections.DropCollection, pb.DropCollectionRequest(name=name))
                        cfg = pb.CollectionConfig(name=name, dim=8)
                        record(
                            "create", s.collections.CreateCollection, pb.CreateCollectionRequest(config=cfg)
                        )
                        time.sleep(0.01)
                    else:
                        target = float(rng.choice([0.9, 0.95]))
                        req = pb.UpdateCollectionRequest(name=name, index=pb.INDEX_AUTO, recall_target=target)
                        record("update", s.collections.UpdateCollection, req)

        with srv.channel() as ch:
            s = Stubs(ch)
            for name in names:
                require(create(s, name, 8), f"CreateCollection {name}")
        roles = ["writer"] * 4 + ["reader"] * 2 + ["dropper", "updater"]
        threads = [threading.Thread(target=worker, args=(n, r), daemon=True) for n, r in enumerate(roles)]
        for t in threads:
            t.start()
        time.sleep(p.storm_seconds)
        stop.set()
        for t in threads:
            t.join(90)
        alive = srv.alive
    total = sum(outcomes.values())
    internal = sum(n for k, n in outcomes.items() if k.endswith(" INTERNAL"))
    unknown = sum(n for k, n in outcomes.items() if k.endswith(" UNKNOWN"))
    details = {
        "calls": total,
        "outcomes": dict(sorted(outcomes.items())),
        "bad_examples": dict(bad.most_common(5)),
        "alive": alive,
    }
    what = f"{internal} INTERNAL and {unknown} UNKNOWN in {total:,} calls"
    if not alive:
        what += f"; server died ({srv.exit_description()})"
    return [Result("6", title, what, internal == 0 and unknown == 0 and alive and total > 100, details)]


# ------------------------------------------------------------------ 7: malformed request bytes


def finding_7(p: Probe) -> list[Result]:
    title = "malformed protobuf bytes (b'\\xff\\xff\\xff') as the request"
    srv = p.general()
    methods = [
        "/visionsearch.v1.CollectionService/Count",
        "/visionsearch.v1.CollectionService/CreateCollection",
        "/visionsearch.v1.SearchService/Search",
        "/visionsearch.v1.EmbedService/Embed",
        "/visionsearch.v1.TagService/Tag",
    ]
    codes: dict[str, str] = {}
    with srv.channel() as ch:
        for m in methods:
            rpc = ch.unary_unary(m, request_serializer=None, response_deserializer=None)
            codes[m.rsplit("/", 1)[1]] = call(rpc, b"\xff\xff\xff", 30).short(160)
    summary = Counter(v.split(" ")[0] for v in codes.values())
    what = ", ".join(f"{n}x {c}" for c, n in summary.items()) + f" over {len(methods)} methods"
    passed = set(summary) == {"INVALID_ARGUMENT"}
    return [Result("7", title, what, passed, {"codes": codes})]


# ------------------------------------------------------------------ 8: a huge word list


def finding_8(p: Probe) -> list[Result]:
    title = "Search with text words=['cat']*500,000 while health is polled every 50 ms"
    srv, name = p.joint_collection()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    stop = threading.Event()

    def poll() -> None:
        with grpc.insecure_channel(srv.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=60)
                except grpc.RpcError as e:
                    errors[e.code().name] += 1
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(1.0)
    with srv.channel() as ch:
        s = Stubs(ch)
        req = pb.SearchRequest(
            collection=name, text=pb.TextQuery(words=pb.Words(words=["cat"] * 500_000)), k=3
        )
        out = call(s.search.Search, req, 180)
    time.sleep(1.0)
    stop.set()
    poller.join(90)
    worst = max(latencies) if latencies else float("inf")
    details = {
        "search": out.short(300),
        "search_seconds": round(out.seconds, 2),
        "max_health_latency_s": round(worst, 3),
        "health_checks": len(latencies),
        "health_errors": dict(errors),
    }
    what = f"Search -> {out.code} after {out.seconds:.1f} s; max health latency {worst:.3f} s"
    return [Result("8", title, what, worst < 1.0 and not errors, details)]


# ------------------------------------------------------------------ 9: messages that echo the input


def finding_9(p: Probe) -> list[Result]:
    title = "error details for a 1 MB collection name"
    srv = p.general()
    name = "n" * 1_000_000
    with srv.channel() as ch:
        s = Stubs(ch)
        outs = {
            "CreateCollection": create(s, name, 4),
            "GetCollection": call(s.collections.GetCollection, pb.GetCollectionRequest(name=name)),
        }
    details = {
        k: {"code": o.code, "details_chars": len(o.details), "start": o.details[:120]}
        for k, o in outs.items()
    }
    what = ", ".join(f"{k} -> {o.code} with {len(o.details):,} characters" for k, o in outs.items())
    passed = all(not o.ok and len(o.details) < 500 for o in outs.values())
    return [Result("9", title, what, passed, details)]


# ------------------------------------------------------------------ 10: head names that are paths


def finding_10(p: Probe) -> list[Result]:
    srv = p.general()
    heads = srv.data_dir / "heads"
    outside = srv.data_dir.parent  # heads/../../x is <data>/../x
    joints = {
        "10-relative": ("head:../../x", outside / "x.safetensors"),
        "10-absolute": (f"head:{outside / 'evil'}", outside / "evil.safetensors"),
    }
    lion = LION.read_bytes()
    results = []
    with srv.channel() as ch:
        s = Stubs(ch)
        for rid, (joint, plant) in joints.items():
            seen: dict[str, Outcome] = {}
            for planted in (False, True):
                if planted:
                    plant.write_bytes(b"not a safetensors file, planted outside " + str(heads).encode())
                try:
                    seen[f"tag{'+file' if planted else ''}"] = call(
                        s.tag.Tag, pb.TagRequest(image=lion, k=3, joint=joint), 120
                    )
                    cname = f"h{rid[-3:]}{int(planted)}"
                    out = create(s, cname, 1280, embedder="mobilenet_v2", joint=joint)
                    seen[f"create{'+file' if planted else ''}"] = out
                    if out.ok:
                        call(s.collections.DropCollection, pb.DropCollectionRequest(name=cname))
                finally:
                    plant.unlink(missing_ok=True)
            same = all(seen[k].short(300) == seen[f"{k}+file"].short(300) for k in ("tag", "create"))
            passed = all(o.code == "INVALID_ARGUMENT" for o in seen.values()) and same
            what = ", ".join(f"{k} -> {o.code}" for k, o in seen.items())
            first = next((o for o in seen.values() if not o.ok), None)
            if first is not None:
                what += f"; e.g. {first.details[:90]!r}"
            if not same:
                what += " (a file planted outside the heads folder changed the answer: the server opened it)"
            details = {k: o.short(400) for k, o in seen.items()} | {"joint": joint, "planted": str(plant)}
            results.append(Result(rid, f"Tag / CreateCollection with joint={joint!r}", what, passed, details))
    return results


# ------------------------------------------------------------------ 11: accepted, should be refused


def finding_11(p: Probe) -> list[Result]:
    srv, name = p.joint_collection()
    results = []
    with srv.channel() as ch:
        s = Stubs(ch)
        out = create(s, "abc\n", 4)
        if out.ok:
            call(s.collections.DropCollection, pb.DropCollectionRequest(name="abc\n"))
        results.append(
            Result(
                "11-newline-name",
                "CreateCollection name 'abc\\n'",
                f"-> {out.short(120)}",
                out.code == "INVALID_ARGUMENT",
                {"create": out.short(300)},
            )
        )
        v = np.ones(1280, np.float32)
        v[7] = np.nan
        out = call(
            s.search.Search, pb.SearchRequest(collection=name, vector=f32(v), space=pb.SPACE_JOINT, k=3)
        )
        what = f"-> {out.short(120)}"
        if out.ok:
            scores = [round(h.score, 3) for h in out.response.hits]
            what += f" with {len(out.response.hits)} hits, scores {scores}"
        results.append(
            Result(
                "11-nan-joint",
                "Search of the joint space with a NaN in the query vector",
                what,
                out.code == "INVALID_ARGUMENT",
                {"search": out.short(300)},
            )
        )
        req = pb.SearchRequest(collection=name, id="x0", k=1)
        req.space = 99  # type: ignore[assignment]
        out = call(s.search.Search, req)
        results.append(
            Result(
                "11-space-99",
                "Search with space=99 (an id query that would otherwise succeed)",
                f"-> {out.short(120)}",
                out.code == "INVALID_ARGUMENT",
                {"search": out.short(300)},
            )
        )
        out = call(s.tag.Tag, pb.TagRequest(image=LION.read_bytes(), k=1, vocabulary=["日本"]), 120)
        what = f"-> {out.short(120)}"
        if out.ok:
            what += f": {[(t.word, round(t.score, 3)) for t in out.response.tags]}"
        results.append(
            Result(
                "11-vocabulary",
                "Tag with vocabulary=['日本']",
                what,
                out.code == "INVALID_ARGUMENT",
                {"tag": out.short(300)},
            )
        )
    return results


# ------------------------------------------------------------------ 12: connections that never handshake


def finding_12(p: Probe) -> list[Result]:
    title = "a TCP connection that never starts the HTTP/2 handshake (server defaults)"
    srv = p.general()
    limit = 30.0
    t0 = time.monotonic()
    closed_after: float | None = None
    received = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.settimeout(1.0)
        while time.monotonic() - t0 < limit:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
            if not chunk:
                closed_after = time.monotonic() - t0
                break
            received += len(chunk)
    details = {
        "closed_after_s": None if closed_after is None else round(closed_after, 2),
        "bytes_received": received,
    }
    if closed_after is None:
        what = f"still open after {limit:.0f} s"
    else:
        what = f"closed by the server after {closed_after:.1f} s"
    return [Result("12", title, what, closed_after is not None, details)]


# ------------------------------------------------------------------ running them

FINDINGS: list[tuple[str, str, Callable[[Probe], list[Result]], float]] = [
    ("1", "disk full", finding_1, 300),
    ("1b", "SIGTERM after disk full", finding_1b, 300),
    ("2", "flipped byte in a WAL", finding_2, 240),
    ("3", "corrupt HNSW graph", finding_3, 600),
    ("4", "damaged snapshot", finding_4, 600),
    ("5", "1x20,000,000 strip", finding_5, 300),
    ("6", "races", finding_6, 300),
    ("7", "malformed bytes", finding_7, 120),
    ("8", "500,000 words", finding_8, 400),
    ("9", "1 MB name", finding_9, 120),
    ("10", "pathed head names", finding_10, 300),
    ("11", "accepted, should be refused", finding_11, 300),
    ("12", "handshake timeout", finding_12, 120),
]


def exceptions_in(text: str) -> Counter[str]:
    """The exceptions a server log shows: the last line of each logged traceback (JSON ``exc`` fields and
    plain tracebacks on stderr), with how often each appeared."""
    found: Counter[str] = Counter()
    for ln in text.splitlines():
        if ln.startswith("{"):
            try:
                exc = json.loads(ln).get("exc")
            except ValueError:
                continue
            if exc:
                found[exc.strip().splitlines()[-1][:200]] += 1
        elif re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*", ln) or ln.startswith(
            "Fatal Python"
        ):
            found[ln[:200]] += 1
    return found


def log_offsets() -> dict[str, int]:
    return {srv.name: srv.log_path.stat().st_size for srv in Server.started if srv.log_path.exists()}


def new_log_text(before: dict[str, int], until: dict[str, int] | None = None) -> str:
    """What the servers logged between two ``log_offsets()``, or since ``before``."""
    parts = []
    for srv in Server.started:
        with contextlib.suppress(OSError), open(srv.log_path, "rb") as f:
            start = before.get(srv.name, 0)
            end = until.get(srv.name, start) if until is not None else None
            f.seek(start)
            parts.append(f.read(None if end is None else max(0, end - start)).decode(errors="replace"))
    return "\n".join(parts)


def run_one(
    p: Probe, fid: str, title: str, fn: Callable[[Probe], list[Result]], budget: float
) -> list[Result]:
    box: dict[str, list[Result]] = {}
    box_lock = threading.Lock()
    first = len(Server.started)
    offsets = log_offsets()

    def settle(results: list[Result]) -> None:
        with box_lock:  # the first verdict stands: a finding that overran its budget is not revised
            box.setdefault("results", results)

    def target() -> None:
        try:
            settle(fn(p))
        except SetupFailed as e:
            settle([Result(fid, title, f"could not set up: {e}", None)])
        except ServerDown as e:
            settle([Result(fid, title, str(e)[:400], False, {"log": e.srv.interesting_log(1500)})])
        except Exception as e:
            tb = {"traceback": traceback.format_exc()[-3000:]}
            settle([Result(fid, title, f"probe error {type(e).__name__}: {e}"[:400], None, tb)])

    t0 = time.monotonic()
    worker = threading.Thread(target=target, name=f"finding-{fid}", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        settle([Result(fid, title, f"hung: no answer within {budget:.0f} s", False)])
        for srv in Server.started[first:]:
            if srv.alive and srv is not p._general:
                srv.kill()
        if p._general is not None and p._general.alive:
            p._general.kill()  # it may be the one hanging; the next finding starts a fresh one
        worker.join(30)
    results: list[Result] = box["results"]
    seconds = round(time.monotonic() - t0, 1)
    for n, r in enumerate(results):
        r.details.setdefault("seconds", seconds)
        # What the servers logged as exceptions while this result was probed (for the last one, also
        # anything logged after it), for the record.
        until = r.log_mark if n < len(results) - 1 else None
        raised = exceptions_in(new_log_text(offsets, until))
        offsets = r.log_mark
        if raised:
            r.details["server_exceptions"] = dict(raised.most_common(8))
    # Servers a finding started and left running (after an exception) do not outlive it.
    for srv in Server.started[first:]:
        if srv.alive and srv is not p._general:
            srv.kill()
    return results


def git_commit(checkout: Path) -> str:
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "(not a git checkout)"


def uncommitted_server_files(checkout: Path) -> list[str]:
    """Files of the server's packages that differ from the commit (the probe runs the working tree)."""
    out = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--", "server", "kernels", "embedder"],
        capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.splitlines() if out.returncode == 0 else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--checkout", type=Path, required=True, help="repository checkout whose server to probe")
    ap.add_argument("--out", type=Path, required=True, help="JSON summary to write")
    ap.add_argument("--only", default="", help="comma-separated finding ids to run (default: all)")
    ap.add_argument("--storm-seconds", type=float, default=20.0, help="length of the race storm (finding 6)")
    ap.add_argument("--keep", action="store_true", help="keep the data folders and server logs")
    args = ap.parse_args(argv)
    checkout = args.checkout.resolve()
    if os.geteuid() != 0:
        print("warning: findings 1 and 1b mount a tmpfs and need root", file=sys.stderr)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    work = Path(tempfile.mkdtemp(prefix="vs-probe-"))
    logs = work / "logs"
    logs.mkdir()
    p = Probe(checkout, work, logs, args.storm_seconds)
    results: list[Result] = []
    t_start = time.time()

    def on_signal(signum: int, _frame: object) -> None:
        p.close()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"probing {checkout} ({git_commit(checkout)[:12]}); work folder {work}", flush=True)
        dirty = uncommitted_server_files(checkout)
        if dirty:
            print(f"note: the checkout's server code differs from its commit: {', '.join(dirty)}", flush=True)
        for fid, title, fn, budget in FINDINGS:
            if only and fid not in only:
                continue
            for r in run_one(p, fid, title, fn, budget):
                results.append(r)
                print(line(r), flush=True)
    finally:
        p.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "checkout": str(checkout),
        "commit": git_commit(checkout),
        "uncommitted_server_files": uncommitted_server_files(checkout),
        "probe": "bench/probe_findings.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "passed": sum(r.passed is True for r in results),
        "failed": sum(r.passed is False for r in results),
        "errors": sum(r.passed is None for r in results),
        "findings": [
            {k: v for k, v in asdict(r).items() if k != "log_mark"} | {"verdict": r.verdict} for r in results
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"{summary['passed']} PASS, {summary['failed']} FAIL, {summary['errors']} ERROR; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
