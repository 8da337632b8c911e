"""The approximate indexes against brute force: LSH and HNSW return exact scores for the rows they return,
find (nearly) what the exact kernel finds, never return dead rows, and see rows added after a build."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import topk_inner_product
from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.lsh import MAX_PROBES, LSHParams, RandomProjectionLSH


def _clustered(seed: int, n: int, dim: int, clusters: int = 200, spread: float = 0.12) -> np.ndarray:
    """Unit vectors around random centres, all in the positive orthant like CNN features."""
    rng = np.random.default_rng(seed)
    centres = np.abs(np.random.default_rng(99).standard_normal((clusters, dim)))
    x = np.abs(centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)))
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    db = _clustered(0, 6000, 48)
    queries = _clustered(1, 200, 48)
    _, truth = topk_inner_product(db, queries, 10)
    return db, queries, truth


def test_lsh_probing_every_bucket_is_exact(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    db, queries, _ = data
    # 3 bits -> 8 buckets, all probed; no PCA pre-filter and a re-rank list as long as the data: brute force.
    lsh = RandomProjectionLSH(48, LSHParams(bits=3, tables=1, probes=8, reduced_dim=0, rerank=len(db)))
    lsh.build(db, np.arange(len(db)))
    scores, _rows, checked = lsh.search(db, np.ones(len(db), np.uint8), queries, 10)
    exact_scores, _ = topk_inner_product(db, queries, 10)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    assert (checked == len(db)).all()


def test_lsh_scores_are_exact_and_recall_grows_with_probes(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    db, queries, truth = data
    # Exact stage-1 scoring (no PCA pre-filter): more probes give a superset of candidates, so recall can
    # only grow.
    lsh = RandomProjectionLSH(48, LSHParams(bits=16, tables=3, reduced_dim=0, rerank=100))
    lsh.build(db, np.arange(len(db)))
    alive = np.ones(len(db), np.uint8)
    recalls, work = [], []
    for probes in (1, 4, 16, 64):
        scores, rows, checked = lsh.search(db, alive, queries, 10, probes)
        ok = rows >= 0
        true_scores = np.einsum("qd,qkd->qk", queries, db[np.where(ok, rows, 0)])
        np.testing.assert_allclose(scores[ok], true_scores[ok], rtol=1e-5, atol=1e-5)
        for r in rows:
            assert len(set(r[r >= 0])) == int((r >= 0).sum())  # no row twice
        recalls.append(_recall(rows, truth))
        work.append(float(checked.mean()))
    assert recalls == sorted(recalls) and work == sorted(work)
    assert recalls[0] < 0.9 < recalls[-1], recalls
    assert work[-1] < 0.6 * len(db), work  # and it did not simply scan everything


def test_lsh_with_the_pca_prefilter_keeps_recall(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    db, queries, truth = data
    lsh = RandomProjectionLSH(48, LSHParams(bits=12, tables=8, probes=16, reduced_dim=16, rerank=100))
    lsh.build(db, np.arange(len(db)))
    _, rows, checked = lsh.search(db, np.ones(len(db), np.uint8), queries, 10)
    assert _recall(rows, truth) > 0.95
    assert checked.mean() < 0.2 * len(db)


@pytest.mark.parametrize("reduced_dim", [0, 16])  # stage 1 on the full vectors, or on int8 PCA codes
def test_lsh_never_returns_dead_rows_and_sees_added_rows(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], reduced_dim: int
) -> None:
    db, queries, truth = data
    n_built = 4000
    lsh = RandomProjectionLSH(48, LSHParams(bits=10, tables=8, probes=16, reduced_dim=reduced_dim))
    lsh.build(db, np.arange(n_built))
    lsh.add(db, np.arange(n_built, len(db)))
    assert lsh.delta_size == len(db) - n_built
    alive = np.ones(len(db), np.uint8)
    dead = truth[:, 0]
    alive[dead] = 0
    _, rows, _ = lsh.search(db, alive, queries, 10)
    assert not np.isin(rows, dead).any()
    # A query equal to a row added after the build finds that row first.
    probe = db[n_built + 5 : n_built + 6]
    alive[n_built + 5] = 1
    _, rows, _ = lsh.search(db, alive, probe, 1)
    assert rows[0, 0] == n_built + 5


@pytest.mark.parametrize(
    ("params", "message"),
    [(LSHParams(bits=0), "bits"), (LSHParams(bits=65), "bits"), (LSHParams(tables=0), "tables")],
)
def test_lsh_rejects_bad_params(params: LSHParams, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomProjectionLSH(8, params)


def test_lsh_rejects_bad_probes_and_k(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    db, queries, _ = data
    lsh = RandomProjectionLSH(48, LSHParams())
    lsh.build(db, np.arange(len(db)))
    alive = np.ones(len(db), np.uint8)
    for probes in (0, MAX_PROBES + 1):
        with pytest.raises(ValueError, match="probes"):
            lsh.search(db, alive, queries, 10, probes)
    with pytest.raises(ValueError, match="k"):
        lsh.search(db, alive, queries, 0)


def test_hnsw_matches_brute_force_closely(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    db, queries, truth = data
    index = HNSWIndex(48, HNSWParams(connectivity=16, expansion_add=128), threads=1)
    index.add(np.arange(len(db)), db)
    scores, rows = index.search(queries, 10, ef=128)
    assert _recall(rows, truth) > 0.97
    true_scores = np.einsum("qd,qkd->qk", queries, db[rows])
    np.testing.assert_allclose(scores, true_scores, atol=1e-4)
    _one_s, one_r = index.search(queries[:1], 10, ef=128)  # a one-row batch takes usearch's other path
    np.testing.assert_array_equal(one_r[0], rows[0])


def test_hnsw_removed_rows_never_come_back(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    db, queries, truth = data
    index = HNSWIndex(48, HNSWParams())
    index.add(np.arange(len(db)), db)
    index.remove(truth[:, :3].reshape(-1))
    _, rows = index.search(queries, 10)
    assert not np.isin(rows, truth[:, :3]).any()
    assert len(index) == len(db) - len(np.unique(truth[:, :3]))


def test_hnsw_save_and_load(tmp_path, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    db, queries, _ = data
    index = HNSWIndex(48, HNSWParams())
    index.add(np.arange(500), db[:500])
    index.save(tmp_path / "g.usearch")
    again = HNSWIndex(48, HNSWParams())
    again.load(tmp_path / "g.usearch")
    np.testing.assert_array_equal(again.search(queries, 5)[1], index.search(queries, 5)[1])
