"""The embedding worker's dynamic batcher, with a stand-in forward so that every interleaving is forced by
events rather than by timing: batching across callers, the bounded queue, and work dropped (never computed)
when its caller's deadline passes or it cancels."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedder.batcher import CallerGone, Cancelled, DynamicBatcher, Expired, QueueFull


class Forward:
    """Sums each image to one number; records every batch; can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(batch.copy())
        if np.isnan(batch).any():
            raise RuntimeError("forward failed")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    def seen(self) -> set[float]:
        return {float(v) for b in self.batches for v in b.reshape(len(b), -1)[:, 0]}


def img(value: float, size: int = 2) -> np.ndarray:
    return np.full((3, size, size), value, np.float32)


def hold(fwd: Forward, batcher: DynamicBatcher, pool: ThreadPoolExecutor):  # type: ignore[no-untyped-def]
    """Occupy the worker with one image until ``fwd.gate`` is set."""
    fwd.gate.clear()
    fwd.entered.clear()
    busy = pool.submit(batcher.embed, [img(-1)])
    assert fwd.entered.wait(5)
    return busy


def test_concurrent_callers_share_a_forward_and_each_gets_its_own_result() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=8, max_wait_s=0.05, max_queue=64)
    with ThreadPoolExecutor(9) as pool:
        busy = hold(fwd, batcher, pool)
        futures = [pool.submit(batcher.embed, [img(i)]) for i in range(8)]
        while len(batcher._queue) < 8:  # all eight wait behind the held forward
            time.sleep(0.001)
        fwd.gate.set()
        busy.result(5)
        for i, f in enumerate(futures):
            np.testing.assert_allclose(f.result(5), [[12.0 * i]])
    assert batcher.stats.largest_batch == 8 and batcher.stats.batches == 2 and batcher.stats.embedded == 9
    batcher.close()


def test_a_full_queue_refuses_at_once_and_the_rest_still_complete() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=4, max_wait_s=0.0, max_queue=3)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        waiting = pool.submit(batcher.embed, [img(1), img(2), img(3)])
        while len(batcher._queue) < 3:
            time.sleep(0.001)
        with pytest.raises(QueueFull, match="queue is full"):
            batcher.embed([img(4)])
        fwd.gate.set()
        busy.result(5)
        np.testing.assert_allclose(waiting.result(5), [[12.0], [24.0], [36.0]])
    assert batcher.stats.refused == 1 and 48.0 not in fwd.seen()
    batcher.close()


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_work_whose_caller_left_is_dropped_not_computed(how: str) -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=4, max_wait_s=0.0, max_queue=8)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        cancelled = CallerGone()
        if how == "deadline":
            left = pool.submit(batcher.embed, [img(7)], deadline=time.monotonic() + 0.1)
        else:
            left = pool.submit(batcher.embed, [img(7)], cancelled=cancelled)
            while not batcher._queue:
                time.sleep(0.001)
            cancelled.set()
        with pytest.raises(Expired if how == "deadline" else Cancelled):
            left.result(5)
        stays = pool.submit(batcher.embed, [img(5)])
        fwd.gate.set()
        busy.result(5)
        np.testing.assert_allclose(stays.result(5), [[60.0]])
    assert 84.0 not in fwd.seen()  # the abandoned image never reached the forward
    assert batcher.stats.dropped == 1
    batcher.close()


def test_a_failed_forward_fails_its_callers_and_the_worker_goes_on() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=4, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="forward failed"):
        batcher.embed([img(float("nan"))])
    np.testing.assert_allclose(batcher.embed([img(1)]), [[12.0]])
    batcher.close()


def test_images_of_different_sizes_go_in_separate_forwards() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=8, max_wait_s=0.05)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        small = pool.submit(batcher.embed, [img(1, 2)])
        large = pool.submit(batcher.embed, [img(1, 3)])
        while len(batcher._queue) < 2:
            time.sleep(0.001)
        fwd.gate.set()
        busy.result(5)
        np.testing.assert_allclose(small.result(5), [[12.0]])
        np.testing.assert_allclose(large.result(5), [[27.0]])
    assert sorted(b.shape[-1] for b in fwd.batches[1:]) == [2, 3]
    batcher.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(Forward(), max_batch=0)


def test_a_caller_gone_signal_wakes_each_waiter_once() -> None:
    gone = CallerGone()
    woken: list[str] = []
    gone.on_set(lambda: woken.append("before"))
    assert woken == [] and not gone.is_set()
    gone.set()
    gone.set()  # a second end-of-call callback wakes nobody again
    gone.on_set(lambda: woken.append("after"))  # registered once already set: called at once
    assert woken == ["before", "after"] and gone.is_set()


class CountingGone(CallerGone):
    """Counts how often a waiter looks at the signal: one that polls looks every few tens of ms."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return super().is_set()


def test_a_waiting_caller_sleeps_until_its_call_ends_and_then_none_of_its_images_is_computed() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=2, max_wait_s=0.0, max_queue=8)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        gone = CountingGone()
        left = pool.submit(batcher.embed, [img(3), img(4)], deadline=time.monotonic() + 60, cancelled=gone)
        while len(batcher._queue) < 2 or not gone.looks:  # queued, and the waiter has registered
            time.sleep(0.001)
        looks = gone.looks
        time.sleep(0.3)
        assert gone.looks == looks and not left.done()  # asleep: a 50 ms poll would have looked ~6 times
        gone.set()
        with pytest.raises(Cancelled):
            left.result(5)
        fwd.gate.set()
        busy.result(5)
        np.testing.assert_allclose(batcher.embed([img(5)]), [[60.0]])
    # Both images of the call were dropped when a batch was formed, not only the one being waited on.
    assert 36.0 not in fwd.seen() and 48.0 not in fwd.seen()
    assert batcher.stats.dropped == 2
    batcher.close()


def test_a_call_that_has_already_ended_is_not_embedded() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=1, max_wait_s=0.0, max_queue=8)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        gone = CallerGone()
        gone.set()
        with pytest.raises(Cancelled):
            batcher.embed([img(6)], cancelled=gone)
        fwd.gate.set()
        busy.result(5)
    np.testing.assert_allclose(batcher.embed([img(1)]), [[12.0]])
    assert 72.0 not in fwd.seen() and batcher.stats.dropped == 1
    batcher.close()


def test_closing_fails_the_images_still_queued() -> None:
    fwd = Forward()
    batcher = DynamicBatcher(fwd, max_batch=1, max_wait_s=0.0, max_queue=8)
    with ThreadPoolExecutor(4) as pool:
        busy = hold(fwd, batcher, pool)
        # Nothing but close ends this wait within 5 s (the deadline only bounds a failing run).
        queued = pool.submit(batcher.embed, [img(2)], deadline=time.monotonic() + 10)
        while not batcher._queue:
            time.sleep(0.001)
        closing = pool.submit(batcher.close)
        with pytest.raises(RuntimeError, match="closed"):
            queued.result(5)
        fwd.gate.set()
        busy.result(5)
        closing.result(10)
    assert 24.0 not in fwd.seen()
