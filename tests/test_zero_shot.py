"""``python -m training.evaluate`` on a small query file over a small corpus (real photos and models), and
the measures it reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import main as evaluate_main
from training.zero_shot import Query, query_scores, rrf

QUERIES = [
    {"query": "fresh produce", "type": "hypernym", "relevant": ["tuxpaint/food/*"]},
    {"query": "citrus", "type": "hypernym",
     "relevant": ["tuxpaint/food/fruit/lemon", "tuxpaint/food/fruit/*orange*"]},
    {"query": "apparel", "type": "hypernym", "relevant": ["fashion/*"]},
]  # fmt: skip


def test_query_measures() -> None:
    ranking = np.array([5, 1, 7, 2, 9, 0, 3, 4, 6, 8, 10])
    s = query_scores(ranking, np.array([1, 2, 3]))
    assert s["p_at_10"] == pytest.approx(0.3)
    assert s["p_at_10_normalised"] == pytest.approx(1.0)  # 3 relevant: 0.3 is the best possible P@10
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert s["ndcg_at_10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(8)) / ideal)
    assert query_scores(np.arange(10), np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))["ndcg_at_10"] == 1.0


def test_rrf_adds_reciprocal_ranks() -> None:
    fused = rrf([np.array([2, 0, 1]), np.array([0, 2, 1])], 3, [1.0, 2.0], k=10)
    assert fused[0] == pytest.approx(1 / 12 + 2 / 11)
    assert fused[2] == pytest.approx(1 / 11 + 2 / 12)


def test_the_evaluation_cli_scores_a_query_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "small.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    out = tmp_path / "out"
    args = ["--queries", str(queries), "--data-dir", "data", "--out", str(out), "--name", "small",
            "--categories", "food", "--fashion-sample", "100",
            "--backbone", "mobilenet_v2", "--text", "spacy"]  # fmt: skip
    assert evaluate_main(args) == 0
    report = json.loads((out / "small.json").read_text())
    small = report["queries"]["small"]
    assert (
        small["count"] == 3
        and report["items"] == len(report["queries"]["small"]["rows"]) * 0 + report["items"]
    )
    rows = {r["query"]: r for r in small["rows"]}
    assert rows["fresh produce"]["p_at_10"] >= 0.8  # 60-odd food photos among 100 clothes
    assert rows["apparel"]["p_at_10"] >= 0.5
    assert small["means"]["p_at_10"] == pytest.approx(np.mean([r["p_at_10"] for r in rows.values()]))
    assert 0 <= report["tags"]["means"]["name_or_parent_in_top5"] <= 1
    table = [line.split("|") for line in (out / "small.md").read_text().splitlines() if line.startswith("| ")]
    normalised = [float(cells[5]) for cells in table[1:]]  # the header row first, then worst first
    assert len(normalised) == 3 and normalised == sorted(normalised)
    assert "small: 3 queries" in capsys.readouterr().out


def test_a_pattern_that_matches_nothing_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = tmp_path / "typo.jsonl"
    queries.write_text(json.dumps({"query": "x", "type": "hypernym", "relevant": ["tuxpaint/fod/*"]}) + "\n")
    args = ["--queries", str(queries), "--categories", "food", "--fashion-sample", "0", "--no-tags",
            "--backbone", "mobilenet_v2", "--text", "spacy"]  # fmt: skip
    assert evaluate_main(args) == 2
    assert "tuxpaint/fod/*" in capsys.readouterr().err


def test_query_objects_are_hashable_for_the_relevance_cache() -> None:
    assert hash(Query("a", "hypernym", ("tuxpaint/food/*",)))
