"""The exact kernel's C score tiles (kernels/scores.py, kernels/native/scores.c): built where the CPU runs
them, equal to a float64 product for every shape the tiling can produce, and the same top-k as the kernel's
sgemm path. Timing is bench/exact.py's."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import scores
from kernels.topk import topk_inner_product
from tests.test_kernels import check_topk, reference_scores, unit_rows

needs_tiles = pytest.mark.skipif(
    not scores.available(), reason="the C score tiles are not built or this CPU has no AVX-512F"
)


def test_the_tiles_are_built_on_a_cpu_that_runs_them() -> None:
    # `make install` builds them (scripts/build_native.sh): a broken build must fail here, not fall back.
    if not scores._cpu_has_avx512f():
        pytest.skip("this CPU has no AVX-512F: the exact kernel takes its scores from BLAS")
    assert scores.LIBRARY.is_file(), "run scripts/build_native.sh"
    assert scores.available()


@needs_tiles
@pytest.mark.parametrize(
    ("rows", "dim", "m", "t0"),
    [
        (1, 1, 1, 0),  # one row: five of the six row slots are padding
        (5, 7, 3, 0),  # fewer rows than one block
        (6, 784, 64, 0),  # one full block of rows by one full block of queries
        (13, 300, 17, 4),  # a tail of one row, 17 queries padded to 32, a tile not at the start
        (100, 33, 50, 0),  # 50 queries padded to 64 (three vectors and a padded fourth)
        (1031, 784, 130, 512),  # query blocks of 64, 64 and a padded 16
        (7, 1280, 48, 0),  # three vectors of queries
        (12, 5, 200, 0),  # a dim shorter than the prefetch stride
    ],
)
def test_a_tile_equals_the_float64_product(rows: int, dim: int, m: int, t0: int) -> None:
    rng = np.random.default_rng(rows * 7 + dim + m)
    db = rng.standard_normal((t0 + rows + 3, dim), dtype=np.float32)  # rows past the tile are never read
    queries = rng.standard_normal((m, dim), dtype=np.float32)
    qt = scores.padded_transpose(queries)
    out = np.full((rows + 2, qt.shape[1]), np.nan, np.float32)
    scores.score_tile(db, t0, t0 + rows, qt, out)
    ref = db[t0 : t0 + rows].astype(np.float64) @ queries.T.astype(np.float64)
    np.testing.assert_allclose(out[:rows, :m], ref, rtol=1e-5, atol=1e-4 * np.sqrt(dim))
    np.testing.assert_array_equal(out[:rows, m:], 0)  # the padding queries score zero
    assert np.isnan(out[rows:]).all()  # nothing past the tile's rows is written


@needs_tiles
@pytest.mark.parametrize("m", [16, 17, 64, 130])
def test_topk_is_the_same_from_the_tiles_or_from_sgemm(m: int) -> None:
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: the kernel's serial path scores with BLAS either way")
    rng = np.random.default_rng(m)
    db = unit_rows(rng, 20_000, 37)
    db = np.concatenate([db, db[:2000]])  # duplicate rows: exact ties
    queries = unit_rows(rng, m, 37)
    alive = (rng.random(db.shape[0]) > 0.3).astype(np.uint8)
    n = db.shape[0] - 5
    tiles = topk_inner_product(db, queries, 25, n=n, alive=alive)
    with scores.switched_off():
        assert not scores.available()
        blas = topk_inner_product(db, queries, 25, n=n, alive=alive)
    assert scores.available()
    ref = reference_scores(db, queries, n=n, alive=alive)
    live = np.flatnonzero(alive[:n])
    for s, r in (tiles, blas):
        check_topk(s, r, ref, 25, live)
    np.testing.assert_allclose(tiles[0], blas[0], rtol=1e-5, atol=1e-5)


@needs_tiles
def test_a_tile_refuses_what_it_cannot_read() -> None:
    db = np.zeros((10, 8), np.float32)
    qt = scores.padded_transpose(np.zeros((3, 8), np.float32))
    out = np.zeros((10, 16), np.float32)
    with pytest.raises(TypeError):
        scores.score_tile(db.astype(np.float64), 0, 10, qt, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        scores.score_tile(np.asfortranarray(db), 0, 10, qt, out)
    with pytest.raises(ValueError, match="shapes"):
        scores.score_tile(db, 0, 11, qt, out)  # past the database
    with pytest.raises(ValueError, match="shapes"):
        scores.score_tile(np.zeros((10, 9), np.float32), 0, 10, qt, out)  # another dim
    with pytest.raises(ValueError, match="holds 4 rows"):
        scores.score_tile(db, 0, 10, qt, out[:4])
