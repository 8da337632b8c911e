"""Forward passes in child processes, so torch never competes for the serving process's GIL.

A torch forward of MobileNetV2 is ~150 module calls; between them the calling thread must take the GIL back.
In a process that also runs 16 gRPC threads decoding images and parsing protobufs, each of those hand-overs
can wait out the interpreter's switch interval: on the 2-core development machine, 8 concurrent Embed
callers got 76% of what the bare model does (bench/embed_throughput.py). Each worker here is a process
(forked from a fork server, never from the serving process, which runs threads) with ``threads`` torch
threads; it takes (m, S, S, 3) uint8 crops and sends back (m, 1280) float32 features over a pipe. A worker
that dies is replaced and the call that was on it fails.

The crops go through a slab of shared memory that each worker has to itself (a ``memfd``, Linux's, handed
over the pipe as a file descriptor, so nothing is left behind in /dev/shm when a process dies): the pipe
carries only the batch's shape instead of 170 KB a 240 px crop, pickled and copied through the kernel. A
batch larger than the slab still goes through the pipe. A worker whose pipe broke, for whatever reason, is
never used again: its replies could be out of step with the calls.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import queue
import threading
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

log = logging.getLogger("visionsearch.embedder")

_IDLE_TRIM_S = 1.0
_RESTART_TIMEOUT_S = 120
_SLAB = "slab"  # the message tag of a batch that is in the shared slab: (_SLAB, shape)


def _serve(conn: Connection, weights: str, threads: int, backbone: str) -> None:
    """The child's loop: crops in, features out; an exception is sent back as its text."""
    import torch  # already imported, with the network, by the fork server (embedder.preload)

    from embedder import preload
    from embedder.heap import release_free_memory, reuse_freed_memory

    # Unlike the serving process (which maps large blocks, server/memory.py), a worker keeps its freed
    # activations for the next forward: mapped and faulted in afresh, they cost a forward 28% of its time.
    if not reuse_freed_memory():
        log.warning(
            "could not set the C library's malloc thresholds; forwards will page-fault their activations"
        )
    torch.set_num_threads(threads)
    net = preload.network(weights, backbone)
    fd = reduction.recv_handle(conn)
    slab = mmap.mmap(fd, 0)
    os.close(fd)
    conn.send(("ready", None))
    worked = False
    while True:
        try:
            # After a second without work, what the last batches left free goes back to the OS: a bulk
            # build or a burst otherwise stays in this worker's heap for good.
            if worked and not conn.poll(_IDLE_TRIM_S):
                release_free_memory()
                worked = False
            message = conn.recv()
            worked = True
        except EOFError:
            return
        if message is None:
            return
        if isinstance(message, tuple) and message[0] == _SLAB:
            # A view, not a copy: the forward's first step converts it to float32 into a tensor of its own.
            pixels = np.ndarray(message[1], np.uint8, buffer=slab)
        else:
            pixels = message
        try:
            conn.send(("ok", net.forward_pixels(pixels)))
        except Exception as exc:  # the parent raises it for the callers of this batch
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx: Any, weights: str, threads: int, n: int, backbone: str, slab_bytes: int) -> None:
        self.conn, child = ctx.Pipe()  # duplex: a socket pair, which can carry a file descriptor
        self.proc = ctx.Process(
            target=_serve, args=(child, weights, threads, backbone), name=f"embed-{n}", daemon=True
        )
        self.proc.start()
        child.close()
        try:
            # Pages are allocated as they are first written, so an unused slab costs nothing.
            fd = os.memfd_create(f"visionsearch-embed-{n}")
            try:
                os.ftruncate(fd, max(mmap.PAGESIZE, slab_bytes))
                self.slab = mmap.mmap(fd, 0)
                reduction.send_handle(self.conn, fd, self.proc.pid)
            finally:
                os.close(fd)
        except BaseException:
            self.proc.kill()
            self.conn.close()
            raise

    def send(self, pixels: np.ndarray) -> None:
        if pixels.dtype == np.uint8 and pixels.nbytes <= len(self.slab):
            np.ndarray(pixels.shape, np.uint8, buffer=self.slab)[...] = pixels
            self.conn.send((_SLAB, pixels.shape))
        else:
            self.conn.send(np.ascontiguousarray(pixels))

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"embedding worker {self.proc.name} did not start within {timeout:.0f} s")
        try:
            status, _ = self.conn.recv()
        except EOFError:
            status = "exited"
        if status != "ready":
            raise RuntimeError(
                f"embedding worker {self.proc.name} exited during start-up (its error is on stderr); a "
                "program that starts workers must guard its entry point with `if __name__ == '__main__':`"
            )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()
        self.slab.close()


class ForwardPool:
    """``forward(pixels)`` on whichever worker process is idle; thread-safe, blocks while all are busy.

    ``pixels`` are (m, S, S, 3) uint8; batches of up to ``slab_bytes`` reach the worker through shared memory,
    bigger ones through the pipe."""

    def __init__(
        self,
        weights: str,
        *,
        processes: int,
        threads: int,
        start_timeout: float = 120,
        backbone: str = "mobilenet_v2",
        slab_bytes: int = 8 * 224 * 224 * 3,
    ) -> None:
        # A fork server that has imported torch and loaded the network (embedder.preload) forks the workers:
        # they share those pages instead of each holding its own copy.
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["embedder.preload"])
        self._weights, self._threads, self._backbone = weights, threads, backbone
        self._slab_bytes = slab_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._count = 0
        workers = [self._spawn() for _ in range(processes)]
        for w in workers:  # they start side by side; wait for all
            w.wait_ready(start_timeout)
        # None is a slot whose worker died and could not be restarted: the next call to take it tries again.
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for w in workers:
            self._idle.put(w)
        self.processes = processes

    def _spawn(self) -> _Worker:
        with self._lock:
            self._count += 1
            n = self._count
        return _Worker(self._ctx, self._weights, self._threads, n, self._backbone, self._slab_bytes)

    def _start_worker(self) -> _Worker:
        worker = self._spawn()
        try:
            worker.wait_ready(_RESTART_TIMEOUT_S)
        except BaseException:
            worker.stop()
            raise
        return worker

    def _release(self, worker: _Worker | None) -> None:
        if self._closed:
            if worker is not None:
                worker.stop()
        else:
            self._idle.put(worker)

    def _replace(self, dead: _Worker) -> None:
        dead.stop()
        try:
            worker: _Worker | None = self._start_worker()
        except Exception as exc:
            log.error("could not restart an embedding worker (%s); the next batch will try again", exc)
            worker = None
        self._release(worker)

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        worker = self._idle.get()
        if worker is None:
            try:
                worker = self._start_worker()
            except Exception as exc:
                self._release(None)
                raise RuntimeError(f"no embedding worker could be started: {exc}") from None
        try:
            worker.send(pixels)
            status, value = worker.conn.recv()
        except BaseException as exc:
            died = isinstance(exc, (EOFError, OSError))
            if died:
                log.error("embedding worker %s died (%s); starting another", worker.proc.name, exc)
            # Whatever broke, this worker's pipe may now be out of step with its replies: never reuse it.
            self._replace(worker)
            if died:
                raise RuntimeError("the embedding worker died during this batch; retry") from None
            raise
        self._release(worker)
        if status != "ok":
            raise RuntimeError(f"embedding failed in the worker: {value}")
        return np.asarray(value)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.stop()
