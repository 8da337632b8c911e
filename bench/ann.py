"""Approximate nearest neighbours, ann-benchmarks style: recall@10 against single-query throughput.

Two data sets, cosine similarity throughout (unit-norm float32 vectors, inner product), k=10:

- ``fashion``: fashion-mnist-784, the 60,000 flattened training images as the base and the 10,000 test
  images as queries;
- ``words``: the 12,248 spaCy word vectors of ``WordVectors().vocabulary_matrix()`` (300-d); a seeded random
  1,000 of them are the queries and the other 11,248 the base.

Ground truth is the exact top-10 from ``kernels.topk.topk_inner_product``. Each method is built once per
setting (build time recorded) and then swept over its search-time parameter:

- ``ours-exact``: ``topk_inner_product`` (one point);
- ``ours-lsh``: ``kernels.lsh.RandomProjectionLSH`` per (bits, tables), over multi-probe counts;
- ``ours-hnsw``: ``kernels.hnsw.HNSWIndex`` (M=16, ef_construction=128), over ef, searching on one thread;
- ``usearch``: a raw ``usearch.index.Index`` with the same settings, the peer ``ours-hnsw`` must be within
  10% of;
- ``faiss-lsh``: ``faiss.IndexLSH`` over nbits (default rotation and thresholds; it ranks by Hamming distance
  only), and ``faiss-lsh+refine``: the same wrapped in ``faiss.IndexRefineFlat``, which re-ranks
  ``k_factor * k`` Hamming candidates by exact inner product;
- ``hnswlib``: ``hnswlib.Index(space="ip")``, M=16, ef_construction=128, over ef, one search thread (skipped
  with a printed reason if hnswlib is not installed).

Queries are issued one at a time, as the server sees them. Before each method and after each build a 1 s
pause lets thread pools stop spinning; each setting gets one untimed warm-up query, then the whole loop over
the queries is timed with ``time.perf_counter``. recall@10 is the mean of |found ∩ truth| / 10. Per data set
a table is printed, sorted by method then recall, with a summary (LSH: best queries/s at recall >= 0.95
against ``ours-exact``; HNSW: ``ours-hnsw`` against raw usearch at each ef). Results go to JSON (default
``bench/results/ann.json``) and a recall/throughput plot next to it (``ann.png``).

Run from the repository root::

    .venv/bin/python bench/ann.py
    .venv/bin/python bench/ann.py --quick   # smoke run: 5k base, 100 queries, 1-2 settings per method
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numba
import numpy as np
import usearch
from _machine import banner  # bench/ is on sys.path when a bench script runs
from matplotlib.figure import Figure
from usearch.index import Index

from embedder.datasets import fashion_mnist
from embedder.words import WordVectors
from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.lsh import LSHParams, RandomProjectionLSH
from kernels.normalize import l2_normalize
from kernels.topk import topk_inner_product

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ann.json"
K = 10
SETTLE_SECONDS = 1.0  # pause before each method and after each build
WORD_QUERIES = 1000
WORD_SEED = 0
RECALL_TARGET = 0.95
HNSW_PEER_TARGET = 0.9  # ours-hnsw queries/s must be at least this fraction of raw usearch's
BUILD_THREADS = os.cpu_count() or 1

SearchFn = Callable[[np.ndarray], np.ndarray]  # one (1, d) float32 query -> its ids (up to K, int64)


@dataclass
class Trial:
    """One sweep point of a method, its index already built."""

    family: str  # one plotted line: the method plus its build-time parameters
    params: dict[str, Any]
    search: SearchFn
    build_seconds: float
    candidates: list[int] | None = None  # filled by the search with each query's re-ranked candidate count


Method = Callable[[np.ndarray], Iterator[Trial]]  # base -> its sweep points, each index built lazily


@dataclass(frozen=True)
class Grid:
    lsh_tables: tuple[tuple[int, int], ...]  # (bits, tables)
    lsh_probes: tuple[int, ...]
    ef: tuple[int, ...]
    faiss_nbits: tuple[int, ...]
    refine_k_factors: tuple[int, ...]


FULL_GRID = Grid(
    lsh_tables=((10, 16), (12, 16), (14, 16), (16, 16)),
    lsh_probes=(4, 8, 16, 32, 64, 128),
    ef=(16, 32, 64, 128, 256),
    faiss_nbits=(256, 512, 1024),
    refine_k_factors=(10, 50),
)
QUICK_GRID = Grid(
    lsh_tables=((16, 16),), lsh_probes=(8, 32), ef=(16, 64), faiss_nbits=(512,), refine_k_factors=(10,)
)
QUICK_BASE = 5000
QUICK_QUERIES = 100


@dataclass
class Result:
    dataset: str
    method: str
    family: str  # one plotted line: the method plus its build-time parameters
    params: dict[str, Any]
    recall: float
    qps: float
    seconds: float
    build_seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    base: np.ndarray
    queries: np.ndarray
    truth: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.truth = topk_inner_product(self.base, self.queries, K)[1]


# --- data -----------------------------------------------------------------------------------------------


def load_fashion(n_base: int | None, n_queries: int | None) -> Dataset:
    base = fashion_mnist("train")[0].reshape(-1, 784)[:n_base]
    queries = fashion_mnist("test")[0].reshape(-1, 784)[:n_queries]
    return Dataset("fashion-mnist-784", l2_normalize(base), l2_normalize(queries))


def load_words(n_base: int | None, n_queries: int | None) -> Dataset:
    vectors = l2_normalize(WordVectors().vocabulary_matrix())
    perm = np.random.default_rng(WORD_SEED).permutation(len(vectors))
    query_rows = perm[:WORD_QUERIES][:n_queries]
    base_rows = np.sort(perm[WORD_QUERIES:])[:n_base]
    return Dataset("spacy-words-300", vectors[base_rows], vectors[query_rows])


LOADERS: dict[str, Callable[[int | None, int | None], Dataset]] = {
    "fashion": load_fashion,
    "words": load_words,
}


# --- methods: each builds its indexes and yields one Trial per sweep point --------------------------------


def _timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    """``(build(), its seconds)``, then a pause so the build's thread pools stop spinning before searches."""
    t0 = time.perf_counter()
    built = build()
    seconds = time.perf_counter() - t0
    time.sleep(SETTLE_SECONDS)
    return built, seconds


def exact_method(base: np.ndarray) -> Iterator[Trial]:
    def search(q: np.ndarray) -> np.ndarray:
        return topk_inner_product(base, q, K)[1][0]

    yield Trial("ours-exact", {}, search, 0.0)


def _lsh_search(index: RandomProjectionLSH, base: np.ndarray, probes: int, candidates: list[int]) -> SearchFn:
    alive = np.ones(len(base), np.uint8)

    def search(q: np.ndarray) -> np.ndarray:
        _, found, checked = index.search(base, alive, q, K, probes)
        candidates.append(int(checked[0]))
        return found[0]

    return search


def lsh_method(grid: Grid) -> Method:
    def method(base: np.ndarray) -> Iterator[Trial]:
        rows = np.arange(len(base), dtype=np.int64)
        for bits, tables in grid.lsh_tables:
            params = LSHParams(bits=bits, tables=tables, reduced_dim=64, rerank=100, seed=0)
            index = RandomProjectionLSH(base.shape[1], params)
            _, build_s = _timed_build(partial(index.build, base, rows))
            for probes in grid.lsh_probes:
                candidates: list[int] = []
                search = _lsh_search(index, base, probes, candidates)
                family = f"ours-lsh K={bits} L={tables}"
                yield Trial(
                    family, {"bits": bits, "tables": tables, "probes": probes}, search, build_s, candidates
                )

    return method


def hnsw_method(grid: Grid) -> Method:
    def method(base: np.ndarray) -> Iterator[Trial]:
        index = HNSWIndex(
            base.shape[1], HNSWParams(connectivity=16, expansion_add=128), threads=BUILD_THREADS
        )
        _, build_s = _timed_build(lambda: index.add(np.arange(len(base)), base))
        index.threads = 1  # built on every core, searched on one
        for ef in grid.ef:

            def search(q: np.ndarray, ef: int = ef) -> np.ndarray:
                return index.search(q, K, ef)[1][0]

            yield Trial("ours-hnsw", {"ef": ef}, search, build_s)

    return method


def usearch_method(grid: Grid) -> Method:
    def method(base: np.ndarray) -> Iterator[Trial]:
        index = Index(ndim=base.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        keys = np.arange(len(base), dtype=np.uint64)
        _, build_s = _timed_build(lambda: index.add(keys, base, threads=BUILD_THREADS))
        for ef in grid.ef:

            def search(q: np.ndarray) -> np.ndarray:
                return np.asarray(index.search(q[0], K, threads=1).keys, np.int64)

            # The sweep point is fixed before its timed loop; usearch's stub hides this property's setter.
            index.expansion_search = ef  # type: ignore[misc]
            yield Trial("usearch", {"ef": ef}, search, build_s)

    return method


def faiss_lsh_method(grid: Grid) -> Method:
    def build(base: np.ndarray, nbits: int, refine: bool) -> tuple[Any, float]:
        def make() -> Any:
            index: Any = faiss.IndexLSH(base.shape[1], nbits)
            if refine:
                index = faiss.IndexRefineFlat(index)
            if not index.is_trained:
                index.train(base)
            index.add(base)
            return index

        return _timed_build(make)

    def method(base: np.ndarray) -> Iterator[Trial]:
        for nbits in grid.faiss_nbits:
            index, build_s = build(base, nbits, refine=False)

            def search(q: np.ndarray, index: Any = index) -> np.ndarray:
                return np.asarray(index.search(q, K)[1][0], np.int64)

            yield Trial("faiss-lsh (Hamming only)", {"nbits": nbits}, search, build_s)
        for nbits in grid.faiss_nbits:
            refined, build_s = build(base, nbits, refine=True)
            for k_factor in grid.refine_k_factors:

                def search_refined(q: np.ndarray, index: Any = refined) -> np.ndarray:
                    return np.asarray(index.search(q, K)[1][0], np.int64)

                refined.k_factor = float(k_factor)
                params = {"nbits": nbits, "k_factor": k_factor}
                yield Trial(f"faiss-lsh+refine k_factor={k_factor}", params, search_refined, build_s)

    return method


def hnswlib_method(grid: Grid, hnswlib: Any) -> Method:
    def method(base: np.ndarray) -> Iterator[Trial]:
        index = hnswlib.Index(space="ip", dim=base.shape[1])

        def make() -> None:
            index.init_index(max_elements=len(base), M=16, ef_construction=128, random_seed=0)
            index.add_items(base, np.arange(len(base)), num_threads=BUILD_THREADS)

        _, build_s = _timed_build(make)
        index.set_num_threads(1)
        for ef in grid.ef:

            def search(q: np.ndarray) -> np.ndarray:
                return np.asarray(index.knn_query(q, k=K)[0][0], np.int64)

            index.set_ef(ef)
            yield Trial("hnswlib", {"ef": ef}, search, build_s)

    return method


def import_hnswlib() -> tuple[Any, str | None]:
    """``(module or None, reason it is unavailable)``."""
    try:
        return importlib.import_module("hnswlib"), None
    except ImportError as e:
        return None, f"hnswlib not importable ({e}); skipped"


# --- measurement ----------------------------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / (K * len(truth))


def run_queries(search: SearchFn, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """All queries one at a time after one untimed warm-up; ``(ids (m, K), -1 padded, seconds)``."""
    search(queries[:1])
    found = np.full((len(queries), K), -1, np.int64)
    t0 = time.perf_counter()
    for i in range(len(queries)):
        ids = search(queries[i : i + 1])
        found[i, : len(ids)] = ids
    return found, time.perf_counter() - t0


def run_method(name: str, method: Method, data: Dataset) -> Iterator[Result]:
    time.sleep(SETTLE_SECONDS)  # let the previous method's thread pools stop spinning
    for trial in method(data.base):
        found, seconds = run_queries(trial.search, data.queries)
        extra = {}
        if trial.candidates:
            extra["mean_candidates"] = float(np.mean(trial.candidates[1:]))  # without the warm-up query
        recall = recall_at_k(found, data.truth)
        qps = len(data.queries) / seconds
        result = Result(
            data.name, name, trial.family, trial.params, recall, qps, seconds, trial.build_seconds, extra
        )
        print(f"  {trial.family:<34} {format_params(trial.params):<28} recall {recall:.4f} {qps:>10,.1f} q/s")
        yield result


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


# --- reporting ------------------------------------------------------------------------------------------


def print_table(name: str, results: list[Result]) -> None:
    print(f"\n{name}: recall@{K} vs single-query throughput")
    print(f"{'method':<34} {'params':<28} {'recall':>7} {'queries/s':>11} {'build s':>8} {'cands':>7}")
    for r in sorted(results, key=lambda r: (r.method, r.family, r.recall)):
        cands = f"{r.extra['mean_candidates']:>7.0f}" if "mean_candidates" in r.extra else f"{'':>7}"
        print(
            f"{r.family:<34} {format_params(r.params):<28} {r.recall:>7.4f} {r.qps:>11,.1f} "
            f"{r.build_seconds:>8.2f} {cands}"
        )


def best_at_recall(results: list[Result], method: str, target: float) -> Result | None:
    ok = [r for r in results if r.method == method and r.recall >= target]
    return max(ok, key=lambda r: r.qps) if ok else None


def summarise(results: list[Result]) -> dict[str, Any]:
    exact = next(r for r in results if r.method == "ours-exact")
    summary: dict[str, Any] = {"ours_exact_qps": exact.qps, "best_at_recall": {}}
    for method in sorted({r.method for r in results} - {"ours-exact"}):
        best = best_at_recall(results, method, RECALL_TARGET)
        summary["best_at_recall"][method] = (
            None
            if best is None
            else {
                "params": best.params,
                "recall": best.recall,
                "qps": best.qps,
                "vs_exact": best.qps / exact.qps,
            }
        )
    ours = {r.params["ef"]: r for r in results if r.method == "ours-hnsw"}
    peer = {r.params["ef"]: r for r in results if r.method == "usearch"}
    summary["hnsw_vs_usearch"] = [
        {
            "ef": ef,
            "ours_qps": ours[ef].qps,
            "usearch_qps": peer[ef].qps,
            "ratio": ours[ef].qps / peer[ef].qps,
            "ours_recall": ours[ef].recall,
            "usearch_recall": peer[ef].recall,
            "within_10pct": ours[ef].qps / peer[ef].qps >= HNSW_PEER_TARGET,
        }
        for ef in sorted(ours.keys() & peer.keys())
    ]
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nours-exact: {summary['ours_exact_qps']:,.1f} queries/s")
    for method, best in summary["best_at_recall"].items():
        if best is None:
            print(f"{method}: no setting reaches recall {RECALL_TARGET}")
        else:
            print(
                f"{method}: best at recall >= {RECALL_TARGET}: {best['qps']:,.1f} q/s "
                f"({format_params(best['params'])}, recall {best['recall']:.4f}) "
                f"= {best['vs_exact']:.2f}x ours-exact"
            )
    for row in summary["hnsw_vs_usearch"]:
        verdict = "ok" if row["within_10pct"] else f"BELOW {HNSW_PEER_TARGET:.0%} of usearch"
        print(
            f"ours-hnsw / usearch at ef={row['ef']:<3}: {row['ratio']:.3f} "
            f"({row['ours_qps']:,.1f} vs {row['usearch_qps']:,.1f} q/s; recall "
            f"{row['ours_recall']:.4f} vs {row['usearch_recall']:.4f}) {verdict}"
        )


def plot(results_by_set: dict[str, list[Result]], sizes: dict[str, str], path: Path) -> None:
    fig = Figure(figsize=(7.5 * len(results_by_set), 6))
    axes = fig.subplots(1, len(results_by_set), squeeze=False)
    for ax, (name, results) in zip(axes[0], results_by_set.items(), strict=True):
        families = sorted({r.family for r in results})
        for family in families:
            points = sorted((r.recall, r.qps) for r in results if r.family == family)
            xs, ys = zip(*points, strict=True)
            style = "*" if len(points) == 1 else "o-"
            ax.plot(xs, ys, style, label=family, markersize=10 if len(points) == 1 else 4)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{K}")
        ax.set_ylabel("queries/s (one query per call, log scale)")
        ax.set_title(f"{name} ({sizes[name]})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Cosine k-NN: recall@{K} vs single-query throughput", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "numba_version": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "numpy_version": np.__version__,
        "faiss_version": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "usearch_version": usearch.__version__,
        "loadavg_at_end": os.getloadavg(),
    }


# --- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--datasets", default="fashion,words", help=f"comma-separated, from {','.join(LOADERS)}")
    p.add_argument("--queries", type=int, default=None, help="use only the first N queries of each set")
    p.add_argument("--quick", action="store_true", help="smoke run: 5k base, 100 queries, few settings")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (the PNG goes beside it)")
    args = p.parse_args(argv)
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    args.datasets = [s.strip() for s in args.datasets.split(",") if s.strip()]
    unknown = set(args.datasets) - LOADERS.keys()
    if unknown or not args.datasets:
        p.error(f"--datasets: unknown {sorted(unknown)}; choose from {sorted(LOADERS)}")
    if args.queries is not None and args.queries < 1:
        p.error("--queries must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    grid = QUICK_GRID if args.quick else FULL_GRID
    n_base = QUICK_BASE if args.quick else None
    n_queries = min(args.queries or QUICK_QUERIES, QUICK_QUERIES) if args.quick else args.queries
    # Every search below is one query on one thread (faiss parallelises over queries), so faiss's OpenMP
    # pool would only spin; builds of the graph indexes use all cores through their own thread arguments.
    faiss.omp_set_num_threads(1)
    hnswlib, hnswlib_reason = import_hnswlib()
    load = os.getloadavg()
    # Numba's parallel regions wait for every thread, so on a busy machine a one-query call can stall for
    # a scheduler time slice: the ours-exact and ours-lsh numbers are only meaningful on an idle machine.
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cpus)")
    notes = [
        "queries issued one at a time; qps = queries / perf_counter time of the whole loop, after 1 warm-up",
        "faiss IndexLSH ranks by Hamming distance only (no re-ranking); default rotate_data / thresholds",
        "faiss-lsh+refine = IndexRefineFlat(IndexLSH): k_factor*k Hamming candidates re-ranked exactly",
        f"ours-exact and ours-lsh run on numba's {numba.get_num_threads()} threads "
        "(a one-query LSH search uses one of them); HNSW methods search on 1 thread",
        f"graph indexes are built with {BUILD_THREADS} threads; faiss omp threads set to 1",
    ]
    if hnswlib_reason:
        print(hnswlib_reason)
        notes.append(hnswlib_reason)

    methods: dict[str, Method] = {
        "ours-exact": exact_method,
        "ours-lsh": lsh_method(grid),
        "ours-hnsw": hnsw_method(grid),
        "usearch": usearch_method(grid),
        "faiss-lsh": faiss_lsh_method(grid),
    }
    if hnswlib is not None:
        methods["hnswlib"] = hnswlib_method(grid, hnswlib)

    results_by_set: dict[str, list[Result]] = {}
    sizes: dict[str, str] = {}
    report: dict[str, Any] = {
        "k": K,
        "metric": "cosine (unit-norm float32, inner product)",
        "quick": args.quick,
    }
    report["datasets"] = {}
    for key in args.datasets:
        data = LOADERS[key](n_base, n_queries)
        sizes[data.name] = f"{len(data.base):,} base, {len(data.queries):,} queries, d={data.base.shape[1]}"
        print(f"\n== {data.name}: {sizes[data.name]}")
        results: list[Result] = []
        for name, method in methods.items():
            results.extend(run_method(name, method, data))
        print_table(data.name, results)
        summary = summarise(results)
        print_summary(summary)
        results_by_set[data.name] = results
        report["datasets"][data.name] = {
            "base": len(data.base),
            "queries": len(data.queries),
            "dim": int(data.base.shape[1]),
            "results": [asdict(r) for r in results],
            "summary": summary,
        }

    report["loadavg_at_start"] = load
    report["notes"] = notes
    report["hnswlib"] = "installed" if hnswlib is not None else hnswlib_reason
    report["machine"] = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(results_by_set, sizes, png)
    print(f"\nwrote {args.out} and {png}")


if __name__ == "__main__":
    main()
