"""A crasher in the style of qdrant/crasher: mixed writes from several threads, kill -9 at a random moment
(often during a snapshot: they are made every 32 KiB of log), restart, and check every item against what was
acknowledged. CI runs a few rounds; ``make soak`` runs 200 (VISIONSEARCH_CRASHER_ROUNDS).

Each writer owns its ids, so an id has at most one write in flight: after the restart it must hold what its
last acknowledged write left, or what its in-flight write (unacknowledged, so either outcome is allowed) would
have left. Vectors and payloads carry a version, so a stale or torn value cannot pass for the right one.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from visionsearch_client import Client, Item, VisionSearchError

from tests.conftest import ServerProcess

ROUNDS = int(os.environ.get("VISIONSEARCH_CRASHER_ROUNDS", "3"))
WRITERS = 4
IDS_PER_WRITER = 60
DIM = 16
COLLECTIONS = ("crash_a", "crash_b")
GONE = -1  # the state of a deleted item


def vector(item_id: str, version: int) -> np.ndarray:
    seed = zlib.crc32(f"{item_id}:{version}".encode())
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class Ledger:
    """Per (collection, id): the version its last acknowledged write left (GONE: deleted), and the version its
    write in flight would leave."""

    acked: dict[tuple[str, str], int] = field(default_factory=dict)
    inflight: dict[tuple[str, str], int] = field(default_factory=dict)
    writes: int = 0


def _writer(address: str, n: int, ledger: Ledger, stop: threading.Event, rng: random.Random) -> None:
    ids = [f"w{n}-{i}" for i in range(IDS_PER_WRITER)]
    with Client(address, timeout=10) as c:
        while not stop.is_set():
            coll = rng.choice(COLLECTIONS)
            batch = rng.sample(ids, rng.randint(1, 6))
            keys = [(coll, i) for i in batch]
            try:
                if rng.random() < 0.25:
                    for k in keys:
                        ledger.inflight[k] = GONE
                    c.delete(coll, batch)
                else:
                    versions = {i: ledger.writes * 100 + n + 1 for i in batch}
                    for k in keys:
                        ledger.inflight[k] = versions[k[1]]
                    c.upsert(
                        coll,
                        [Item(i, vector=vector(i, v), payload={"v": str(v)}) for i, v in versions.items()],
                    )
            except VisionSearchError:
                return  # the server died mid-call: this write stays in flight, either outcome allowed
            for k in keys:
                ledger.acked[k] = ledger.inflight.pop(k)
            ledger.writes += 1


def _verify(address: str, ledger: Ledger) -> int:
    checked = 0
    with Client(address, timeout=30) as c:
        for coll in COLLECTIONS:
            keys = {k for k in ledger.acked if k[0] == coll} | {k for k in ledger.inflight if k[0] == coll}
            ids = sorted(i for _, i in keys)
            got = {g.id: g for g in c.get_items(coll, ids, with_vector=True)} if ids else {}
            for item_id in ids:
                allowed = {ledger.acked.get((coll, item_id), GONE)}
                if (coll, item_id) in ledger.inflight:
                    allowed.add(ledger.inflight[(coll, item_id)])
                g = got.get(item_id)
                state = GONE if g is None else int(g.payload["v"])
                assert state in allowed, (coll, item_id, state, allowed)
                if g is not None:
                    np.testing.assert_allclose(g.vector, vector(item_id, state), atol=1e-6)
                checked += 1
    return checked


def test_kill_9_at_random_moments_loses_no_acknowledged_write(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    rng = random.Random(20261201)
    ledger = Ledger()
    flags = ("--fsync", "--snapshot-wal-bytes", "32768", "--embed-processes", "0")
    proc = spawn_server(tmp_path, *flags)
    with Client(proc.address) as c:
        for coll in COLLECTIONS:
            c.create_collection(coll, dim=DIM)
    total_checked = 0
    for _ in range(ROUNDS):
        stop = threading.Event()
        seeds = [random.Random(rng.random()) for _ in range(WRITERS)]
        threads = [
            threading.Thread(target=_writer, args=(proc.address, n, ledger, stop, seeds[n]))
            for n in range(WRITERS)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        proc.signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        stop.set()
        for t in threads:
            t.join(30)
        proc = spawn_server(tmp_path, *flags)
        total_checked += _verify(proc.address, ledger)
        # What was in flight is now settled one way or the other: read it back as acknowledged.
        with Client(proc.address) as c:
            for (coll, item_id), _v in list(ledger.inflight.items()):
                got = c.get_items(coll, [item_id])
                ledger.acked[(coll, item_id)] = int(got[0].payload["v"]) if got else GONE
        ledger.inflight.clear()
    assert ledger.writes > ROUNDS * 10, ledger.writes
    print(f"crasher: {ROUNDS} kill -9 rounds, {ledger.writes} acknowledged writes, {total_checked} checks")
