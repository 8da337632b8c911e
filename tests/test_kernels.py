"""Differential tests of the Numba kernels against brute-force numpy.

Every search result is checked against a float64 numpy reference: same ids up to ties, scores close to the
true inner products, sorted best first, no duplicate or dead rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

import kernels.topk as topk_module
from kernels.exact import ExactIndex
from kernels.normalize import has_nonfinite, l2_normalize, row_norms
from kernels.rescore import rescore
from kernels.topk import topk_inner_product

TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------
# helpers


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def reference_scores(
    db: np.ndarray, queries: np.ndarray, n: int | None = None, alive: np.ndarray | None = None
) -> np.ndarray:
    """float64 (m, n) score matrix; dead rows score -inf."""
    n = db.shape[0] if n is None else n
    s = queries.astype(np.float64) @ db[:n].astype(np.float64).T
    if alive is not None:
        s[:, alive[:n] == 0] = -np.inf
    return s


def check_topk(
    scores: np.ndarray,
    rows: np.ndarray,
    ref: np.ndarray,
    k: int,
    alive_rows: np.ndarray | None = None,
) -> None:
    """Assert ``(scores, rows)`` is a correct top-k of the reference score matrix ``ref`` (dead rows -inf)."""
    m, n = ref.shape
    live = int(np.count_nonzero(np.isfinite(ref[0]))) if m else n
    kk = min(k, live)
    assert scores.shape == (m, kk)
    assert rows.shape == (m, kk)
    assert scores.dtype == np.float32
    assert rows.dtype == np.int64
    if m == 0 or kk == 0:
        return
    # Every row is a real, live row, and appears at most once per query.
    assert rows.min() >= 0
    assert rows.max() < n
    if alive_rows is not None:
        assert np.isin(rows, alive_rows).all(), "a dead row was returned"
    srt = np.sort(rows, axis=1)
    assert (np.diff(srt, axis=1) != 0).all(), "duplicate row in one result"
    # Scores are the true inner products of the returned rows, best first.
    true = np.take_along_axis(ref, rows, axis=1)
    assert np.isfinite(true).all(), "a dead row was returned"
    np.testing.assert_allclose(scores, true, rtol=TOL, atol=TOL)
    assert (np.diff(scores, axis=1) <= 0).all(), "scores not sorted descending"
    # Scores equal numpy's top-k scores.
    part = np.argpartition(-ref, kk - 1, axis=1)[:, :kk]
    ref_top = -np.sort(-np.take_along_axis(ref, part, axis=1), axis=1)
    np.testing.assert_allclose(scores, ref_top, rtol=TOL, atol=TOL)
    # Same ids up to ties: any id in one set but not the other scores (truly) the k-th best score.
    kth = ref_top[:, -1]
    for j in range(m):
        diff = np.setxor1d(rows[j], part[j])
        if diff.size:
            np.testing.assert_allclose(ref[j, diff], kth[j], rtol=0, atol=TOL, err_msg=f"query {j}")


@pytest.fixture(scope="module")
def db64() -> np.ndarray:
    return unit_rows(np.random.default_rng(1), 20_000, 64)


@pytest.fixture(scope="module")
def db37() -> np.ndarray:
    return unit_rows(np.random.default_rng(2), 20_000, 37)


# ----------------------------------------------------------------------------------------------------------
# topk_inner_product: differential against numpy


@pytest.mark.parametrize(
    ("dim", "m", "k"),
    [
        (64, 1000, 10),
        (37, 1000, 10),
        (37, 1000, 1),
        (64, 1, 1),
        (64, 1, 100),
        (37, 1, 10),
        (64, 3, 10),
        (37, 3, 50),
        (64, 5, 10),
        (37, 5, 7),
        (37, 6, 33),
        (64, 7, 500),
        # From 16 queries up the scores come from BLAS tiles (kernels.topk._BLAS_MIN_QUERIES): both sides
        # of the switch, and a k wider than a tile's share.
        (37, 15, 10),
        (64, 16, 10),
        (37, 64, 100),
        (64, 64, 5000),
    ],
)
def test_topk_matches_numpy(db64: np.ndarray, db37: np.ndarray, dim: int, m: int, k: int) -> None:
    db = db64 if dim == 64 else db37
    queries = unit_rows(np.random.default_rng(1000 + 10 * m + k + dim), m, dim)
    scores, rows = topk_inner_product(db, queries, k)
    check_topk(scores, rows, reference_scores(db, queries), k)


def test_topk_non_unit_vectors_and_negative_scores() -> None:
    # Unnormalised data where many scores are negative; the heap's -inf sentinel must not leak.
    rng = np.random.default_rng(3)
    db = (rng.standard_normal((3000, 19)) * 0.1).astype(np.float32)
    queries = (rng.standard_normal((9, 19)) * 0.1).astype(np.float32)
    scores, rows = topk_inner_product(db, queries, 2999)
    check_topk(scores, rows, reference_scores(db, queries), 2999)
    assert (scores[:, -1] < 0).all()


def test_topk_query_order_does_not_matter(db37: np.ndarray) -> None:
    # A query's result must not depend on where it sits in the batch (4-block body vs. tail).
    rng = np.random.default_rng(4)
    queries = unit_rows(rng, 11, 37)
    s_all, r_all = topk_inner_product(db37, queries, 8)
    for j in range(11):
        s1, r1 = topk_inner_product(db37, np.ascontiguousarray(queries[j : j + 1]), 8)
        np.testing.assert_allclose(s1[0], s_all[j], rtol=TOL, atol=TOL)
        assert set(r1[0]) == set(r_all[j])


def topk_on_one_and_all_threads(
    db: np.ndarray, queries: np.ndarray, k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(topk_inner_product(db, queries, k))
    finally:
        numba.set_num_threads(before)
    return results


def test_topk_same_result_for_any_thread_count(db64: np.ndarray) -> None:
    queries = unit_rows(np.random.default_rng(5), 13, 64)
    results = topk_on_one_and_all_threads(db64, queries, 25)
    for scores, rows in results:
        check_topk(scores, rows, reference_scores(db64, queries), 25)
        np.testing.assert_array_equal(rows, results[0][1])


@pytest.mark.parametrize("m", [32, 600])  # 600: several tiles per thread's chunk, the last one short
def test_topk_blas_path_same_result_split_or_serial(db64: np.ndarray, m: int) -> None:
    # From 16 queries up: one BLAS chunk per Numba thread (each on one BLAS thread) or, on one thread, the
    # serial tile loop. Both must be right, ties included; their scores may differ in the last bit (BLAS on
    # one thread or two rounds differently), so tied duplicates may swap places, never scores.
    db = np.concatenate([db64, db64[:3000]])  # duplicate rows: exact ties across chunks
    queries = unit_rows(np.random.default_rng(6), m, 64)
    results = topk_on_one_and_all_threads(db, queries, 40)
    for scores, rows in results:
        check_topk(scores, rows, reference_scores(db, queries), 40)
        np.testing.assert_allclose(scores, results[0][0], rtol=TOL, atol=TOL)
        assert ((rows % 20_000) == (results[0][1] % 20_000)).mean() > 0.95


def test_blas_one_thread_window_restores_the_count_after_concurrent_uses() -> None:
    from kernels import blas

    if not blas.available():
        pytest.skip("numpy's BLAS here is not OpenBLAS: the window is a no-op and the kernel stays serial")
    get, _ = blas._openblas()
    before = get()
    inside: list[int] = []
    gate = threading.Barrier(2)

    def user() -> None:
        with blas.one_thread_per_call():
            gate.wait()  # both inside at once
            inside.append(get())
            gate.wait()

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside == [1, 1]
    assert get() == before


_OTHER_THREADS_CPU = """
import faiss  # faiss-cpu bundles an OpenBLAS of its own, loaded here before numpy's is looked for
import os, sys, threading, time
import numpy as np
from kernels import blas

a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
me = threading.get_native_id()

def others():  # CPU seconds used so far by every thread of this process but this one
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

def work():
    time.sleep(0.5)  # BLAS's idle helper stops spin-waiting
    before = others()
    for _ in range(30):
        a @ a
    return others() - before

outside = work()
with blas.one_thread_per_call():
    inside = work()
print(outside, inside)
"""


def test_blas_window_changes_numpys_blas_even_with_another_openblas_loaded_first() -> None:
    # Behaviour, not names: outside the window numpy's sgemm shares the work with BLAS's helper thread;
    # inside it the calling thread does it all. The subprocess imports faiss first, whose own OpenBLAS once
    # took the window's change (numpy's sgemm then kept its helper under every kernel thread).
    from kernels import blas

    if not blas.available():
        pytest.skip("numpy's BLAS here is not OpenBLAS: the window is a no-op and the kernel stays serial")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one usable CPU: OpenBLAS runs no helper thread, so outside and inside cannot differ")
    pytest.importorskip("faiss", reason="faiss-cpu (a dev dependency) is the other OpenBLAS this loads first")
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_THREADS_CPU],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OPENBLAS_NUM_THREADS": "2"},
        check=True,
    )
    outside, inside = map(float, done.stdout.split())
    assert outside > 0.1, done.stdout  # the control: two BLAS threads outside the window
    assert inside < 0.25 * outside, done.stdout


# ----------------------------------------------------------------------------------------------------------
# topk_inner_product: edge cases


@pytest.mark.parametrize("k", [7, 8, 100])
def test_topk_k_at_least_n_returns_all_rows_sorted(k: int) -> None:
    rng = np.random.default_rng(6)
    db = unit_rows(rng, 7, 37)
    queries = unit_rows(rng, 5, 37)
    scores, rows = topk_inner_product(db, queries, k)
    assert rows.shape == (5, 7)
    for j in range(5):
        assert sorted(rows[j].tolist()) == list(range(7))
    check_topk(scores, rows, reference_scores(db, queries), k)


def test_topk_single_row_database() -> None:
    rng = np.random.default_rng(7)
    db = unit_rows(rng, 1, 16)
    queries = unit_rows(rng, 6, 16)
    for k in (1, 5):
        scores, rows = topk_inner_product(db, queries, k)
        assert rows.shape == (6, 1)
        assert (rows == 0).all()
        np.testing.assert_allclose(scores[:, 0], queries @ db[0], rtol=TOL, atol=TOL)


def test_topk_single_dimension() -> None:
    db = np.array([[0.5], [-2.0], [3.0], [1.0]], dtype=np.float32)
    queries = np.array([[1.0], [-1.0]], dtype=np.float32)
    scores, rows = topk_inner_product(db, queries, 2)
    np.testing.assert_array_equal(rows, [[2, 3], [1, 0]])
    np.testing.assert_allclose(scores, [[3.0, 1.0], [2.0, -0.5]])


@pytest.mark.parametrize(("n_distinct", "repeats", "k"), [(50, 7, 10), (300, 20, 25), (40, 3, 120)])
def test_topk_ties_from_duplicate_rows(n_distinct: int, repeats: int, k: int) -> None:
    # Duplicated rows spread over several chunks: tied scores must be a valid choice among tied rows.
    rng = np.random.default_rng(8 + n_distinct)
    base = unit_rows(rng, n_distinct, 24)
    db = np.ascontiguousarray(base[rng.permutation(np.repeat(np.arange(n_distinct), repeats))])
    queries = unit_rows(rng, 9, 24)
    scores, rows = topk_inner_product(db, queries, k)
    check_topk(scores, rows, reference_scores(db, queries), k)


def test_topk_all_rows_identical() -> None:
    rng = np.random.default_rng(9)
    db = np.ascontiguousarray(np.repeat(unit_rows(rng, 1, 8), 5000, axis=0))
    queries = unit_rows(rng, 5, 8)
    scores, rows = topk_inner_product(db, queries, 40)
    check_topk(scores, rows, reference_scores(db, queries), 40)
    for j in range(5):
        assert len(set(rows[j].tolist())) == 40
        np.testing.assert_allclose(scores[j], queries[j] @ db[0], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("k", [0, -1, -100])
def test_topk_k_below_one_raises(k: int) -> None:
    db = unit_rows(np.random.default_rng(10), 10, 4)
    with pytest.raises(ValueError, match="k must be"):
        topk_inner_product(db, db[:2].copy(), k)


@pytest.mark.parametrize("bad", ["db64", "q64", "db_int", "q_f16"])
def test_topk_wrong_dtype_raises(bad: str) -> None:
    db = unit_rows(np.random.default_rng(11), 10, 4)
    q = db[:3].copy()
    if bad == "db64":
        db = db.astype(np.float64)
    elif bad == "q64":
        q = q.astype(np.float64)
    elif bad == "db_int":
        db = db.astype(np.int32)
    else:
        q = q.astype(np.float16)
    with pytest.raises(TypeError):
        topk_inner_product(db, q, 2)


@pytest.mark.parametrize(("db_shape", "q_shape"), [((10, 4), (3, 5)), ((10, 4), (4,)), ((40,), (3, 4))])
def test_topk_shape_mismatch_raises(db_shape: tuple[int, ...], q_shape: tuple[int, ...]) -> None:
    db = np.ones(db_shape, dtype=np.float32)
    q = np.ones(q_shape, dtype=np.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        topk_inner_product(db, q, 2)


def test_topk_non_contiguous_raises() -> None:
    rng = np.random.default_rng(12)
    db = unit_rows(rng, 20, 6)
    q = unit_rows(rng, 4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        topk_inner_product(db[::2], q, 2)
    with pytest.raises(ValueError, match="contiguous"):
        topk_inner_product(np.asfortranarray(db), q, 2)
    with pytest.raises(ValueError, match="contiguous"):
        topk_inner_product(db, np.asfortranarray(q), 2)
    wide = np.zeros((4, 12), dtype=np.float32)
    wide[:, ::2] = q
    with pytest.raises(ValueError, match="contiguous"):
        topk_inner_product(db, wide[:, ::2], 2)


def test_topk_empty_query_batch() -> None:
    db = unit_rows(np.random.default_rng(13), 50, 5)
    scores, rows = topk_inner_product(db, np.empty((0, 5), dtype=np.float32), 3)
    assert scores.shape == (0, 0)
    assert rows.shape == (0, 0)
    assert scores.dtype == np.float32
    assert rows.dtype == np.int64


def test_topk_empty_database() -> None:
    db = np.empty((0, 5), dtype=np.float32)
    q = unit_rows(np.random.default_rng(14), 3, 5)
    scores, rows = topk_inner_product(db, q, 3)
    assert scores.shape == (3, 0)
    assert rows.shape == (3, 0)


@pytest.mark.parametrize("n", [-1, 11])
def test_topk_n_out_of_range_raises(n: int) -> None:
    db = unit_rows(np.random.default_rng(15), 10, 4)
    with pytest.raises(ValueError, match="outside"):
        topk_inner_product(db, db[:2].copy(), 2, n=n)


def test_topk_bad_alive_raises() -> None:
    db = unit_rows(np.random.default_rng(16), 10, 4)
    q = db[:2].copy()
    with pytest.raises(ValueError, match="alive"):
        topk_inner_product(db, q, 2, alive=np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="alive"):
        topk_inner_product(db, q, 2, alive=np.ones(9, dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------------
# topk_inner_product: alive mask and n


@pytest.mark.parametrize(("dead_fraction", "k"), [(0.5, 50), (0.99, 10), (0.999, 40)])
def test_topk_alive_mask_matches_numpy(db37: np.ndarray, dead_fraction: float, k: int) -> None:
    rng = np.random.default_rng(17)
    alive = (rng.random(db37.shape[0]) >= dead_fraction).astype(np.uint8)
    queries = unit_rows(rng, 21, 37)
    scores, rows = topk_inner_product(db37, queries, k, alive=alive)
    check_topk(scores, rows, reference_scores(db37, queries, alive=alive), k, np.flatnonzero(alive))


def test_topk_dead_rows_never_returned_even_if_best() -> None:
    rng = np.random.default_rng(18)
    db = unit_rows(rng, 5000, 16)
    queries = np.ascontiguousarray(db[:8])  # each query's best row is itself...
    alive = np.ones(5000, dtype=np.uint8)
    alive[:8] = 0  # ...which is dead
    scores, rows = topk_inner_product(db, queries, 5, alive=alive)
    assert not np.isin(rows, np.arange(8)).any()
    check_topk(scores, rows, reference_scores(db, queries, alive=alive), 5, np.flatnonzero(alive))


def test_topk_live_rows_in_one_chunk_only() -> None:
    # Several chunks, but one holds fewer live rows than k and another none: empty heap slots must be dropped.
    rng = np.random.default_rng(19)
    db = unit_rows(rng, 8192, 12)
    queries = unit_rows(rng, 6, 12)
    for live_rows in (np.array([3, 4000]), np.array([8000, 8100, 8191]), np.arange(0, 8192, 900)):
        alive = np.zeros(8192, dtype=np.uint8)
        alive[live_rows] = 1
        scores, rows = topk_inner_product(db, queries, 10, alive=alive)
        assert rows.shape == (6, min(10, live_rows.size))
        check_topk(scores, rows, reference_scores(db, queries, alive=alive), 10, live_rows)


@pytest.mark.parametrize("dead_fraction", [0.5, 0.999])
def test_topk_blas_split_path_skips_dead_rows_and_rows_past_n(dead_fraction: float) -> None:
    # 40 queries over 20,000 rows take the BLAS path, split over the threads when there are several (each
    # thread's transposed tiles and selection); dead rows and rows past n must never come back.
    rng = np.random.default_rng(23)
    db = unit_rows(rng, 20_000, 32)
    queries = unit_rows(rng, 40, 32)
    n = 17_001
    alive = (rng.random(20_000) >= dead_fraction).astype(np.uint8)
    scores, rows = topk_inner_product(db, queries, 12, n=n, alive=alive)
    live = np.flatnonzero(alive[:n])
    check_topk(scores, rows, reference_scores(db, queries, n=n, alive=alive), 12, live)


def test_topk_all_dead_returns_width_zero() -> None:
    rng = np.random.default_rng(20)
    db = unit_rows(rng, 300, 9)
    q = unit_rows(rng, 4, 9)
    scores, rows = topk_inner_product(db, q, 5, alive=np.zeros(300, dtype=np.uint8))
    assert scores.shape == (4, 0)
    assert rows.shape == (4, 0)


@pytest.mark.parametrize(("n", "k"), [(0, 3), (1, 3), (777, 10), (5000, 64)])
def test_topk_n_limits_rows(db64: np.ndarray, n: int, k: int) -> None:
    # Rows past n are ignored, even when they are alive and would score best.
    rng = np.random.default_rng(21 + n)
    queries = np.ascontiguousarray(db64[n : n + 7])
    alive = np.ones(db64.shape[0], dtype=np.uint8)
    for a in (None, alive):
        scores, rows = topk_inner_product(db64, queries, k, n=n, alive=a)
        assert rows.shape == (7, min(k, n))
        if n:
            assert rows.max() < n
        check_topk(scores, rows, reference_scores(db64, queries, n=n), k)
    alive_n = (rng.random(n) < 0.5).astype(np.uint8)
    scores, rows = topk_inner_product(db64, queries, k, n=n, alive=alive_n)
    check_topk(scores, rows, reference_scores(db64, queries, n=n, alive=alive_n), k, np.flatnonzero(alive_n))


# ----------------------------------------------------------------------------------------------------------
# ExactIndex


def check_index(index: ExactIndex, data: dict[int, np.ndarray], queries: np.ndarray, k: int) -> None:
    """Compare the index against a dict of live row -> vector."""
    live = np.array(sorted(data), dtype=np.int64)
    assert len(index) == live.size
    np.testing.assert_array_equal(index.live_rows(), live)
    for r in live[:: max(1, live.size // 50)]:
        np.testing.assert_array_equal(index.vector(int(r)), data[int(r)])
    full = np.zeros((index.rows, index.dim), dtype=np.float32)
    alive = np.zeros(index.rows, dtype=np.uint8)
    for r, v in data.items():
        full[r] = v
        alive[r] = 1
    scores, rows = index.search(queries, k)
    check_topk(scores, rows, reference_scores(full, queries, alive=alive), k, live)


def test_exact_index_add_remove_search_differential() -> None:
    rng = np.random.default_rng(30)
    dim = 29
    index = ExactIndex(dim, capacity=16)
    data: dict[int, np.ndarray] = {}
    queries = unit_rows(rng, 9, dim)
    expected_rows = 0
    for step in range(25):
        batch = unit_rows(rng, int(rng.integers(1, 200)), dim)
        got = index.add(batch)
        np.testing.assert_array_equal(got, np.arange(expected_rows, expected_rows + batch.shape[0]))
        expected_rows += batch.shape[0]
        assert index.rows == expected_rows
        data.update({int(r): v for r, v in zip(got, batch, strict=True)})
        if step % 3 == 2:
            live = np.array(sorted(data))
            victims = rng.choice(live, size=live.size // 4, replace=False)
            victims = np.concatenate([victims, rng.integers(0, expected_rows, 5)])  # some maybe already dead
            victims = np.unique(victims)
            was_live = sum(int(v) in data for v in victims)
            assert index.remove(victims) == was_live
            for v in victims:
                data.pop(int(v), None)
        check_index(index, data, queries, 15)
    # Search with k larger than the live count returns every live row.
    check_index(index, data, queries, len(data) + 10)


def test_exact_index_growth_keeps_old_rows() -> None:
    rng = np.random.default_rng(31)
    index = ExactIndex(7, capacity=1)  # clamps to 16
    batches = [unit_rows(rng, m, 7) for m in (10, 6, 1, 40, 300, 3)]
    all_rows = []
    for b in batches:
        all_rows.append(index.add(b))
    everything = np.concatenate(batches)
    rows = np.concatenate(all_rows)
    np.testing.assert_array_equal(rows, np.arange(everything.shape[0]))
    for r in range(everything.shape[0]):
        np.testing.assert_array_equal(index.vector(r), everything[r])
    # Every row finds itself first.
    scores, got = index.search(everything, 1)
    np.testing.assert_array_equal(got[:, 0], rows)
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=TOL, atol=TOL)


def test_exact_index_remove_counts_and_len() -> None:
    rng = np.random.default_rng(32)
    index = ExactIndex(5)
    index.add(unit_rows(rng, 20, 5))
    assert len(index) == 20
    assert index.remove(np.array([3, 4, 5])) == 3
    assert len(index) == 17
    assert index.remove(np.array([3, 4, 5])) == 0
    assert len(index) == 17
    assert index.remove(np.array([5, 6, 7])) == 2
    assert len(index) == 15
    assert index.remove(np.array([], dtype=np.int64)) == 0
    assert index.remove([0]) == 1
    assert len(index) == 14
    assert index.rows == 20
    np.testing.assert_array_equal(index.live_rows(), [1, 2, *range(8, 20)])
    with pytest.raises(IndexError):
        index.remove(np.array([20]))
    with pytest.raises(IndexError):
        index.remove(np.array([-1]))
    assert len(index) == 14
    assert index.remove(np.arange(20)) == 14
    assert len(index) == 0
    scores, rows = index.search(unit_rows(rng, 3, 5), 4)
    assert scores.shape == (3, 0)
    assert rows.shape == (3, 0)


def test_exact_index_remove_duplicate_rows_counts_once() -> None:
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    assert index.remove(np.array([1, 1])) == 1
    assert len(index) == 3


def test_exact_index_replace_is_append_then_clear() -> None:
    index = ExactIndex(3)
    (old,) = index.add(np.array([[1.0, 0.0, 0.0]]))
    index.add(np.array([[0.0, 1.0, 0.0]]))
    (new,) = index.add(np.array([[0.0, 0.0, 1.0]]))
    assert index.remove(np.array([old])) == 1
    scores, rows = index.search(np.array([[1.0, 0.0, 1.0]], dtype=np.float32), 3)
    assert rows.tolist() == [[new, 1]]
    np.testing.assert_allclose(scores, [[1.0, 0.0]])


def test_exact_index_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ExactIndex(0)
    index = ExactIndex(4)
    with pytest.raises(ValueError):
        index.add(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add(np.ones(4, dtype=np.float32))
    assert len(index) == 0
    assert index.rows == 0
    # float64 and non-contiguous inputs are converted, not rejected.
    rows = index.add(np.eye(4)[:, ::1][::-1])
    np.testing.assert_array_equal(rows, np.arange(4))
    np.testing.assert_array_equal(index.vector(0), [0, 0, 0, 1])
    _, got = index.search(np.eye(8)[0:4:2, ::2], 1)
    assert got.tolist() == [[3], [2]]
    with pytest.raises(ValueError):
        index.search(np.ones((1, 3), dtype=np.float32), 1)
    with pytest.raises(ValueError):
        index.search(np.ones((1, 4), dtype=np.float32), 0)


def test_exact_index_concurrent_readers_during_writes() -> None:
    rng = np.random.default_rng(33)
    dim, k, min_live = 32, 10, 400
    index = ExactIndex(dim, capacity=16)
    index.add(unit_rows(rng, 600, dim))
    queries = unit_rows(rng, 5, dim)
    writer_batches = [unit_rows(rng, int(rng.integers(20, 120)), dim) for _ in range(60)]
    done = threading.Event()
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    results: list[tuple[np.ndarray, np.ndarray]] = []
    results_lock = threading.Lock()

    def reader() -> None:
        try:
            start.wait()
            for _ in range(300):
                scores, rows = index.search(queries, k)
                with results_lock:
                    results.append((scores, rows))
                if done.is_set():
                    break
        except BaseException as e:  # reported below
            errors.append(e)

    def writer() -> None:
        try:
            wrng = np.random.default_rng(34)
            start.wait()
            for batch in writer_batches:
                index.add(batch)
                live = index.live_rows()
                # Keep far more live rows than k, so a search never legitimately has fewer than k.
                n_remove = min(int(wrng.integers(0, 60)), live.size - min_live)
                if n_remove > 0:
                    index.remove(wrng.choice(live, size=n_remove, replace=False))
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            done.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    assert done.is_set()
    assert index.rows == 600 + sum(b.shape[0] for b in writer_batches)
    assert len(index) == index.live_rows().size >= min_live
    assert results
    final_rows = index.rows
    all_vectors = np.stack([index.vector(r) for r in range(final_rows)])
    for scores, rows in results:
        assert scores.shape == (5, k)
        assert rows.shape == (5, k)
        assert (rows >= 0).all()
        assert (rows < final_rows).all()
        assert np.isfinite(scores).all()
        assert (np.diff(scores, axis=1) <= 0).all()
        assert (np.diff(np.sort(rows, axis=1), axis=1) != 0).all()
        # Rows are never rewritten, so every score must match the row's final vector (a reader never saw a
        # row before its data was written).
        true = np.einsum("md,mkd->mk", queries, all_vectors[rows])
        np.testing.assert_allclose(scores, true, rtol=TOL, atol=TOL)
    # After the writers stop, the index is exactly right again.
    data = {int(r): index.vector(int(r)) for r in index.live_rows()}
    check_index(index, data, queries, k)


def test_exact_index_search_racing_remove_returns_only_real_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministically replays one interleaving of a lock-free reader and the writer: remove() lands after
    # topk_inner_product counted the live rows and before the scan.
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    scan = topk_module._chunk_heaps

    def remove_then_scan(*args):  # type: ignore[no-untyped-def]
        index.remove(np.array([3]))
        return scan(*args)

    monkeypatch.setattr(topk_module, "_chunk_heaps", remove_then_scan)
    scores, rows = index.search(np.ones((1, 4), dtype=np.float32), 4)
    assert (rows >= 0).all(), rows
    assert np.isfinite(scores).all(), scores


# ----------------------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize(("n", "d"), [(1, 1), (5, 3), (1000, 37), (257, 64)])
def test_l2_normalize_unit_norms(n: int, d: int) -> None:
    rng = np.random.default_rng(40 + d)
    x = rng.standard_normal((n, d)) * rng.uniform(1e-3, 1e3, size=(n, 1))
    x_copy = x.copy()
    y = l2_normalize(x)
    assert y.dtype == np.float32
    assert y.shape == (n, d)
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float64), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x_copy)  # input untouched
    x32 = x.astype(np.float32)
    y32 = l2_normalize(x32)
    assert y32 is not x32
    np.testing.assert_array_equal(x32, x_copy.astype(np.float32))


def test_row_norms_matches_numpy() -> None:
    rng = np.random.default_rng(50)
    x = rng.standard_normal((333, 45)).astype(np.float32)
    norms = row_norms(x)
    assert norms.dtype == np.float32
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-5)
    np.testing.assert_allclose(row_norms(x[:, ::3]), np.linalg.norm(x[:, ::3], axis=1), rtol=1e-5)


@pytest.mark.parametrize("zero_row", [0, 3, 9])
def test_l2_normalize_zero_row_raises(zero_row: int) -> None:
    x = np.random.default_rng(51).standard_normal((10, 6)).astype(np.float32)
    x[zero_row] = 0
    with pytest.raises(ValueError, match="zero"):
        l2_normalize(x)


def test_l2_normalize_rejects_non_matrix() -> None:
    with pytest.raises(ValueError):
        l2_normalize(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError):
        l2_normalize(np.ones((2, 2, 2), dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (4, 3, 2), (100,)])
def test_has_nonfinite_detects(bad: float, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(52)
    x = rng.standard_normal(shape).astype(np.float32)
    assert has_nonfinite(x) is False
    assert has_nonfinite(x.astype(np.float64)) is False
    for pos in {0, x.size - 1, int(rng.integers(0, x.size))}:
        y = x.copy()
        y.reshape(-1)[pos] = bad
        assert has_nonfinite(y) is True
        assert has_nonfinite(y.astype(np.float64)) is True


def test_has_nonfinite_edge_cases() -> None:
    assert has_nonfinite(np.empty((0, 4), dtype=np.float32)) is False
    assert has_nonfinite(np.full((3, 3), np.finfo(np.float32).max, dtype=np.float32)) is False
    big = np.full((2, 2), np.finfo(np.float32).max, dtype=np.float32)
    with np.errstate(over="ignore"):
        big = big * np.float32(2)  # overflows to inf
    assert has_nonfinite(big) is True
    x = np.zeros((6, 8), dtype=np.float32)
    x[5, 7] = np.nan
    assert has_nonfinite(x[:, ::2]) is False  # the NaN is not in this view
    assert has_nonfinite(x[::-1, ::-1]) is True


def test_parallel_kernels_run_on_a_thread_safe_layer() -> None:
    import numba

    topk_inner_product(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), 2)
    assert numba.threading_layer() in ("omp", "tbb")


# ----------------------------------------------------------------------------- rescore (quantized graphs)


@pytest.mark.parametrize("m,c,k", [(1, 20, 10), (3, 7, 10), (5, 64, 64)])
def test_rescore_equals_a_numpy_ranking_of_the_candidates(m: int, c: int, k: int) -> None:
    rng = np.random.default_rng(11)
    db = unit_rows(rng, 500, 33)
    queries = unit_rows(rng, m, 33)
    rows = np.stack([rng.choice(500, c, replace=False) for _ in range(m)]).astype(np.int64)
    rows[0, ::3] = -1  # a graph short of candidates leaves holes
    scores, got = rescore(db, queries, rows, k)
    assert scores.shape == got.shape == (m, k)
    for j in range(m):
        cand = rows[j][rows[j] >= 0]
        exact = db[cand] @ queries[j]
        order = np.argsort(-exact, kind="stable")[:k]
        width = len(order)
        np.testing.assert_array_equal(got[j, :width], cand[order])
        np.testing.assert_allclose(scores[j, :width], exact[order], rtol=1e-5, atol=1e-6)
        assert (got[j, width:] == -1).all() and np.isneginf(scores[j, width:]).all()


def test_rescore_keeps_the_graphs_order_between_equal_scores_and_refuses_bad_rows() -> None:
    db = np.zeros((6, 4), np.float32)
    db[:, 0] = [0.5, 0.9, 0.5, 0.5, 0.1, 0.9]
    q = np.array([[1, 0, 0, 0]], np.float32)
    scores, rows = rescore(db, q, np.array([[3, 5, 0, 1, 2]]), 4)
    assert rows.tolist() == [[5, 1, 3, 0]]  # 5 before 1 and 3 before 0: as the candidates came
    np.testing.assert_allclose(scores, [[0.9, 0.9, 0.5, 0.5]])
    # Past the few elements a sort handles by insertion (stable by accident): 80 candidates, 40 of them tied.
    big = np.zeros((200, 4), np.float32)
    big[:, 0] = np.where(np.arange(200) % 2 == 0, 0.5, 0.25)
    cand = np.random.default_rng(3).permutation(200)[:80]
    _, top = rescore(big, q, cand[None, :], 80)
    tied = [r for r in cand if r % 2 == 0]
    assert top[0].tolist() == tied + [r for r in cand if r % 2 == 1]
    with pytest.raises(IndexError, match=r"-1 or within 0\.\.5"):
        rescore(db, q, np.array([[6]]), 1)
    with pytest.raises(IndexError):
        rescore(db, q, np.array([[-2]]), 1)
    with pytest.raises(ValueError, match="rows must be"):
        rescore(db, q, np.array([1, 2]), 1)
    with pytest.raises(TypeError):
        rescore(db.astype(np.float64), q, np.array([[1]]), 1)
