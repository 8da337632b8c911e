"""Dynamic batching for the embedding worker: concurrent callers' images share one torch forward.

Callers decode and preprocess their own images (in their own threads, in parallel) and enqueue the arrays.
Each of ``workers`` threads takes the first waiting image, then gathers more until it has ``max_batch`` or
``max_wait_s`` has passed since the first arrived, and runs them as one forward; the workers' forwards run
side by side (the forward itself runs in a worker process, see ``embedder.workers``). Which mix of batch size,
workers and torch threads per forward is fastest depends on the CPU: ``bench/embed_throughput.py`` measures
it (on the 2-core development machine, two one-thread worker processes taking up to 8 images each did best).

Bounded: at most ``max_queue`` images wait. A submission that does not fit is refused at once
(``QueueFull``): a growing queue only turns overload into timeouts for everyone. Work nobody waits for is
dropped before it reaches torch: an image whose caller's deadline has passed or whose caller cancelled is
skipped when its batch is formed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from embedder.errors import EmbedderError


class QueueFull(EmbedderError):
    """More images are waiting than the queue holds."""


class Expired(EmbedderError):
    """The caller's deadline passed before its images were embedded."""


class Cancelled(EmbedderError):
    """The caller went away before its images were embedded."""


class CallerGone(threading.Event):
    """An event set when a call ends (answered, cancelled or failed), which also wakes whoever still waits on
    that call's images.

    Waiters sleep until their images are done, their deadline passes, or this is set, and never poll:
    with a 50 ms poll, 8 waiting callers woke the serving process 160 times a second for nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[Callable[[], None]] = []
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()

    def on_set(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` once this is set (at once if it already is)."""
        with self._wakers_lock:
            if not self.is_set():
                self._wakers.append(wake)
                return
        wake()


@dataclass
class _Job:
    array: np.ndarray  # one image as the forward takes it, e.g. a (S, S, 3) uint8 crop
    deadline: float | None  # time.monotonic() value
    future: Future[np.ndarray] = field(default_factory=Future)


@dataclass
class BatcherStats:
    batches: int = 0
    embedded: int = 0  # images that went through torch
    dropped: int = 0  # images skipped because their caller's deadline passed or it cancelled
    refused: int = 0  # images refused because the queue was full
    largest_batch: int = 0


class DynamicBatcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.002,
        max_queue: int = 64,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and max_wait_s >= 0")
        self._forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatcherStats()
        # Called after each forward with (images, seconds), for metrics; set by whoever watches.
        self.on_batch: Callable[[int, float], None] | None = None
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats_lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, name=f"embed-worker-{n}", daemon=True) for n in range(workers)
        ]
        for w in self._workers:
            w.start()

    def embed(
        self,
        arrays: Sequence[np.ndarray],
        *,
        deadline: float | None = None,
        cancelled: CallerGone | None = None,
    ) -> np.ndarray:
        """Embed images (each as the forward takes it); blocks until done. ``deadline`` is a
        ``time.monotonic()`` value; ``cancelled`` is set by whoever learns that the caller went away."""
        if not arrays:
            raise ValueError("no images to embed")
        jobs = [_Job(np.ascontiguousarray(a), deadline) for a in arrays]
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedding worker is closed")
            if len(self._queue) + len(jobs) > self.max_queue:
                with self._stats_lock:
                    self.stats.refused += len(jobs)
                raise QueueFull(
                    f"the embedding queue is full ({len(self._queue)} of {self.max_queue} images waiting): "
                    "retry with backoff, or spread the load over more servers"
                )
            self._queue.extend(jobs)
            self._cond.notify()
        out = []
        try:
            for job in jobs:
                out.append(self._wait(job, deadline, cancelled))
        except BaseException:
            for job in jobs:  # the call's other images are not wanted either: the worker skips them
                job.future.cancel()
            raise
        return np.stack(out)

    def _wait(self, job: _Job, deadline: float | None, cancelled: CallerGone | None) -> np.ndarray:
        woken = threading.Event()
        job.future.add_done_callback(lambda _f: woken.set())
        if cancelled is not None:
            cancelled.on_set(woken.set)
        while True:
            woken.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            # Only this method cancels the future, after which it returns; so a done future has its outcome.
            if job.future.done():
                return job.future.result()
            if cancelled is not None and cancelled.is_set():
                job.future.cancel()
                raise Cancelled("the caller cancelled the request")
            if deadline is not None and time.monotonic() >= deadline:
                # Cancelling a queued job makes the worker skip it; one already in torch finishes.
                job.future.cancel()
                raise Expired("deadline exceeded while waiting for the embedding worker")

    @property
    def queue_depth(self) -> int:
        """Images waiting for a worker."""
        return len(self._queue)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in left:  # their callers would otherwise wait for a worker that is gone
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the embedding worker closed"))
        for w in self._workers:
            w.join(timeout=5)

    # ------------------------------------------------------------------ the worker

    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            batch = [self._queue.popleft()]
            until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                expired = job.deadline is not None and now >= job.deadline
                # set_running_or_notify_cancel is False for a job its caller cancelled.
                if expired or not job.future.set_running_or_notify_cancel():
                    with self._stats_lock:
                        self.stats.dropped += 1
                    # The waiter may cancel it in between, at the same deadline.
                    if expired:
                        with contextlib.suppress(InvalidStateError):
                            job.future.set_exception(Expired("deadline passed in the queue"))
                    continue
                live.append(job)
            if not live:
                continue
            # Images of one input size stack into one forward; requests at other sizes form their own.
            by_shape: dict[tuple[int, ...], list[_Job]] = {}
            for job in live:
                by_shape.setdefault(job.array.shape, []).append(job)
            for jobs in by_shape.values():
                t0 = time.perf_counter()
                try:
                    vectors = self._forward(np.stack([j.array for j in jobs]))
                except Exception as exc:  # every waiting caller gets the failure, the worker goes on
                    for j in jobs:
                        j.future.set_exception(exc)
                    continue
                with self._stats_lock:
                    self.stats.batches += 1
                    self.stats.embedded += len(jobs)
                    self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
                if self.on_batch is not None:
                    self.on_batch(len(jobs), time.perf_counter() - t0)
                for j, v in zip(jobs, vectors, strict=True):
                    j.future.set_result(v)
