"""Hybrid search over gRPC: BM25 over named payload fields fused with the dense joint ranking (real server on
port 0, real photos and models), the index following the collection's changes, and the refusals."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import grpc
import pytest
from visionsearch_client import Client, Hybrid, Item

from kernels.lexical import LexicalIndex
from tests.conftest import LION
from tests.test_bad_input import refused

STAMPS = Path("/usr/share/tuxpaint/stamps")
PHOTOS = {
    "lion": ("animals/mammals/cats/lion.png", "Lions live in the grasslands of Africa."),
    "tiger": ("animals/mammals/cats/tiger.png", "Tigers are the largest cats."),
    "banana": ("food/fruit/banana.png", "Bananas grow in bunches."),
    "pineapple": ("food/fruit/pineapple.png", "A tropical plant with an edible fruit."),
    "kettle": ("household/kettle.png", "A gift from the zoo shop."),
}


def test_bm25_stems_and_ignores_stop_words() -> None:
    index = LexicalIndex(["Lions live in Africa.", "a lion", "Dolphins swim", "", "the the the"])
    rows, scores = index.search("lions", 10)
    assert set(rows.tolist()) == {0, 1} and (scores > 0).all()
    assert index.search("zebra", 10)[0].size == 0  # an unknown word scores nothing, not the empty text
    assert index.search("the", 10)[0].size == 0


@pytest.fixture
def captioned(client: Client, fresh_name: str) -> str:
    client.create_collection(fresh_name, embedder="mobilenet_v2", joint="conse:spacy")
    client.upsert(fresh_name, [
        Item(n, image=(STAMPS / p).read_bytes(), payload={"label": n, "caption": c})
        for n, (p, c) in PHOTOS.items()
    ])  # fmt: skip
    return fresh_name


def test_a_caption_word_brings_its_photo_first(client: Client, captioned: str) -> None:
    # "zoo" means the big cats to the dense ranking; only the kettle's caption holds the word.
    dense = client.search(captioned, sentence="zoo", k=5)
    hybrid = client.search(captioned, sentence="zoo", k=5, hybrid=["label", "caption"])
    assert dense[0].id in ("lion", "tiger") and hybrid[0].id == "kettle"
    # RRF: the first item is first in both rankings or in one with the other far behind; scores fall.
    assert all(a.score >= b.score for a, b in itertools.pairwise(hybrid))
    assert hybrid[0].score <= 2 / 61 + 1e-6


def test_hybrid_follows_the_collection(client: Client, captioned: str) -> None:
    assert "grape" not in [
        h.id for h in client.search(captioned, words=["vineyard"], k=3, hybrid=["caption"])
    ]
    client.upsert(captioned, [Item("grape", image=(STAMPS / "food/fruit/grapes.png").read_bytes(),
                                   payload={"caption": "Grapes grow in a vineyard."})])  # fmt: skip
    assert client.search(captioned, words=["vineyard"], k=3, hybrid=["caption"])[0].id == "grape"
    client.delete(captioned, ["grape"])
    assert "grape" not in [
        h.id for h in client.search(captioned, words=["vineyard"], k=3, hybrid=["caption"])
    ]


def test_lexical_weight_and_rrf_k(client: Client, captioned: str) -> None:
    heavy = client.search(captioned, sentence="grasslands", k=2, hybrid=Hybrid(["caption"], 10, 50.0))
    # Only lion's caption holds the word: 50 / (10 + 1) from BM25 plus 1 / (10 + its dense rank).
    assert heavy[0].id == "lion"
    assert 50 / 11 + 1 / 15 - 1e-4 <= heavy[0].score <= 50 / 11 + 1 / 11 + 1e-4


def test_the_default_collection_carries_names_and_captions(client: Client) -> None:
    hits = client.search("default", sentence="gas giants", k=5, hybrid=["label", "caption"])
    # Two captions (Uranus, Neptune) say "gas giants": BM25 ranks them first, then "A gas cylinder."
    assert sum("gas giants" in h.payload.get("caption", "") for h in hits) == 2


@pytest.mark.parametrize(
    ("hybrid", "fragment"),
    [
        (Hybrid([]), "hybrid.text_fields"),
        (Hybrid([""]), "hybrid.text_fields"),
        (Hybrid(["x" * 65]), "hybrid.text_fields"),
        (Hybrid([f"f{i}" for i in range(17)]), "hybrid.text_fields"),
        (Hybrid(["caption"], rrf_k=-1), "hybrid.rrf_k"),
        (Hybrid(["caption"], rrf_k=10_001), "hybrid.rrf_k"),
        (Hybrid(["caption"], lexical_weight=-1.0), "hybrid.lexical_weight"),
        (Hybrid(["caption"], lexical_weight=math.nan), "hybrid.lexical_weight"),
        (Hybrid(["caption"], lexical_weight=101.0), "hybrid.lexical_weight"),
    ],
)
def test_bad_hybrid_options_are_refused(client: Client, hybrid: Hybrid, fragment: str) -> None:
    refused(
        lambda: client.search("default", words=["cat"], k=3, hybrid=hybrid),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )


def test_hybrid_needs_a_text_query(client: Client) -> None:
    refused(
        lambda: client.search("default", image=LION.read_bytes(), k=3, hybrid=["caption"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "hybrid needs a text query",
    )
    refused(
        lambda: client.search("default", id="tuxpaint/animals/mammals/cats/lion", k=3, hybrid=["caption"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "hybrid needs a text query",
    )


def test_hybrid_honours_the_filter(client: Client, fresh_name: str) -> None:
    from visionsearch_client.filters import match, where

    client.create_collection(
        fresh_name, embedder="efficientnet_lite1", joint="conse:spacy", payload_indexes={"kind": "keyword"}
    )
    kinds = {n: "cat" if "cats/" in p else "other" for n, (p, _) in PHOTOS.items()}
    client.upsert(fresh_name, [
        Item(n, image=(STAMPS / p).read_bytes(), payload={"caption": c, "kind": kinds[n]})
        for n, (p, c) in PHOTOS.items()
    ])  # fmt: skip
    # The kettle's caption holds "zoo", but the filter keeps only the cats: it must not come back.
    hits = client.search(
        fresh_name, sentence="zoo", k=5, hybrid=["caption"], filter=where(must=[match("kind", "cat")])
    )
    assert {h.id for h in hits} == {"lion", "tiger"}
