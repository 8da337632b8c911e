"""Embedding worker processes: the same features as the in-process network, errors come back as errors,
and a worker that dies is replaced while the pool goes on serving."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from embedder import assets
from embedder.image import ImageNetwork, decode_pixels
from embedder.workers import ForwardPool, _Worker
from tests.conftest import LION


def _a_worker(pool: ForwardPool) -> _Worker:
    """One of the pool's workers, left in the pool."""
    worker = pool._idle.get()
    pool._idle.put(worker)
    assert worker is not None
    return worker


@pytest.fixture(scope="module")
def pool() -> Iterator[ForwardPool]:
    p = ForwardPool(str(assets.mobilenet_v2_weights()), processes=1, threads=1)
    yield p
    p.close()


def test_worker_features_equal_the_in_process_network(pool: ForwardPool) -> None:
    crops = np.stack([decode_pixels(LION.read_bytes(), 10**8)] * 2)
    local = ImageNetwork(str(assets.mobilenet_v2_weights()))
    np.testing.assert_allclose(pool.forward(crops), local.forward_pixels(crops), rtol=1e-5, atol=1e-6)


def test_a_failed_forward_is_an_error_and_the_worker_goes_on(pool: ForwardPool) -> None:
    with pytest.raises(RuntimeError, match="embedding failed in the worker"):
        pool.forward(np.zeros((1, 224, 224), np.uint8))  # no colour axis
    assert pool.forward(np.stack([decode_pixels(LION.read_bytes(), 10**8)])).shape == (1, 1280)


def test_a_dead_worker_is_replaced(pool: ForwardPool) -> None:
    worker = _a_worker(pool)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.join(10)
    with pytest.raises(RuntimeError, match="died"):
        pool.forward(np.stack([decode_pixels(LION.read_bytes(), 10**8)]))
    assert pool.forward(np.stack([decode_pixels(LION.read_bytes(), 10**8)])).shape == (1, 1280)


def test_a_worker_that_cannot_be_restarted_leaves_a_slot_the_next_batch_fills(
    pool: ForwardPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting a worker is made to fail (a stand-in: nothing here makes a real fork server refuse); the pool
    # must neither reuse the dead worker nor lose its slot, and a later batch starts a worker again.
    lion = np.stack([decode_pixels(LION.read_bytes(), 10**8)])
    worker = _a_worker(pool)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.join(10)

    def refuse() -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pool, "_start_worker", refuse)
    with pytest.raises(RuntimeError, match="died"):
        pool.forward(lion)
    with pytest.raises(RuntimeError, match="no embedding worker could be started: out of memory"):
        pool.forward(lion)
    monkeypatch.undo()
    local = ImageNetwork(str(assets.mobilenet_v2_weights()))
    np.testing.assert_allclose(pool.forward(lion), local.forward_pixels(lion), rtol=1e-4, atol=1e-5)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_an_idle_worker_gives_a_big_batchs_memory_back(pool: ForwardPool) -> None:
    # A forward of 8 images leaves about 100 MB of activations free in the worker's heap, which keeps them for
    # the next forward while busy (embedder/heap.py; at 8 images every tensor comes from the heap, so the
    # amount is the same every time); a second of idleness later the worker has trimmed them, so a bulk
    # build does not stay resident. Measured against the worker's own idle size.
    worker = _a_worker(pool)
    crops = np.stack([decode_pixels(LION.read_bytes(), 10**8)] * 8)
    pool.forward(crops[:2])
    time.sleep(2)  # idle: trimmed
    idle = _rss_mb(worker.proc.pid)
    pool.forward(crops)
    assert _rss_mb(worker.proc.pid) > idle + 50, (
        "the batch left nothing resident: this test would prove nothing"
    )
    deadline = time.monotonic() + 10
    while _rss_mb(worker.proc.pid) > idle + 25 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rss_mb(worker.proc.pid) <= idle + 25, (idle, _rss_mb(worker.proc.pid))
    assert pool.forward(crops[:2]).shape == (2, 1280)  # and it goes on serving


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt, the 10th field


def test_a_workers_forwards_reuse_their_activations() -> None:
    # Under glibc's default thresholds each 2-image forward mapped or trimmed its larger activations and
    # faulted ~4,700 fresh pages back in (28% of its time in the kernel); the worker keeps them in its heap
    # (embedder/heap.py). The idle trim above gives them back only after a second without work. A worker of
    # its own: glibc's dynamic threshold would rise after another test's bigger batches and hide the faults.
    pool = ForwardPool(str(assets.mobilenet_v2_weights()), processes=1, threads=1)
    try:
        worker = _a_worker(pool)
        crops = np.stack([decode_pixels(LION.read_bytes(), 10**8)] * 2)
        pool.forward(crops)  # the first forward faults its activations in once
        faults = []
        for _ in range(5):
            before = _minor_faults(worker.proc.pid)
            pool.forward(crops)
            faults.append(_minor_faults(worker.proc.pid) - before)
        # The median: a stall of over a second between two forwards lets the idle trim run, and the next
        # forward then faults its activations in once more, as it should.
        assert sorted(faults)[2] < 500, faults
    finally:
        pool.close()


class _Recording:
    """A worker's pipe that records what the parent sends, to see which batches went through the slab."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent: list[object] = []

    def send(self, obj: object) -> None:
        self.sent.append(obj)
        self.conn.send(obj)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_crops_go_through_the_slab_and_bigger_batches_through_the_pipe() -> None:
    # A slab of exactly one 224 px crop: one image goes through shared memory, two through the pipe, and so
    # does a batch that is not uint8; each batch's features equal the in-process network's, so a batch never
    # sees the bytes of the one before.
    rng = np.random.default_rng(7)
    crops = rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    local = ImageNetwork(str(assets.mobilenet_v2_weights()))
    pool = ForwardPool(str(assets.mobilenet_v2_weights()), processes=1, threads=1, slab_bytes=224 * 224 * 3)
    try:
        worker = pool._idle.get()
        assert worker is not None
        recording = _Recording(worker.conn)
        worker.conn = recording
        pool._idle.put(worker)
        for batch in (crops[:2], crops[2:3], crops[3:4], crops[1:3], crops[0:1].astype(np.int16)):
            # float tolerance: the worker's one torch thread sums in another order than this process's
            np.testing.assert_allclose(pool.forward(batch), local.forward_pixels(batch), rtol=1e-4, atol=1e-5)
        kinds = ["pipe" if isinstance(m, np.ndarray) else m[0] for m in recording.sent]  # type: ignore[index]
        assert kinds == ["pipe", "slab", "slab", "pipe", "pipe"]
    finally:
        pool.close()
