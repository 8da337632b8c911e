"""Tags people can use: the WordNet hierarchy tagger (real taxonomy), de-duplication of word forms, min_score,
a caller's own vocabulary, and the Tag RPC's options and refusals over gRPC (real server, photos, models)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch_client import Client

from embedder.joint import IMAGENET_CLASSES
from embedder.tags import HierarchyTagger, dedupe, word_form
from embedder.taxonomy import Taxonomy
from server.services import Services
from tests.conftest import LION
from tests.test_bad_input import refused

STAMPS = Path("/usr/share/tuxpaint/stamps")
# A photo its backbone classifies right (the lion stamp is taken for a chow: see the tag table in
# bench/results/zero_shot/default.md).
TIGER = STAMPS / "animals/mammals/cats/tiger.png"


@pytest.fixture(scope="module")
def tagger(services: Services) -> HierarchyTagger:
    return services.joints.tagger()


def one_hot(*weights: tuple[str, float]) -> np.ndarray:
    p = np.zeros((1, len(IMAGENET_CLASSES)), np.float32)
    for name, w in weights:
        p[0, IMAGENET_CLASSES.index(name)] = w
    return p


@pytest.mark.parametrize(
    ("word", "form"),
    [("lions", "lion"), ("Lion", "lion"), ("puppies", "puppy"), ("boxes", "box"), ("glasses", "glass"),
     ("big cats", "big cat"), ("bus", "bus"), ("grass", "grass")],
)  # fmt: skip
def test_word_forms(word: str, form: str) -> None:
    assert word_form(word) == form


def test_dedupe_keeps_the_first_form_of_each_word() -> None:
    ranked = [("lion", 0.9), ("lions", 0.8), ("dog", 0.7), ("Dogs", 0.6), ("cat", 0.5)]
    assert dedupe(ranked, 3) == [("lion", 0.9), ("dog", 0.7), ("cat", 0.5)]


def test_a_sure_lion_is_tagged_lion_then_its_hypernyms(tagger: HierarchyTagger) -> None:
    tags = tagger.tags(one_hot(("lion", 1.0)), 5)[0]
    words = [w for w, _ in tags]
    assert words[:3] == ["lion", "big cat", "feline"]
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(tags))
    assert "entity" not in words and "object" not in words


def test_hesitation_between_siblings_ranks_their_parent_first(tagger: HierarchyTagger) -> None:
    words = [w for w, _ in tagger.tags(one_hot(("lion", 0.4), ("tiger", 0.3), ("leopard", 0.3)), 3)[0]]
    assert words[0] == "big cat"


def test_min_score_and_vocabulary(tagger: HierarchyTagger) -> None:
    p = one_hot(("lion", 0.7), ("golden retriever", 0.3))
    everything = tagger.tags(p, 50)[0]
    floor = 0.2
    kept = tagger.tags(p, 50, min_score=floor)[0]
    assert kept == [t for t in everything if t[1] >= floor] and 0 < len(kept) < len(everything)
    own = tagger.tags(p, 5, vocabulary=["Dogs", "cat", "car", "tigers"])[0]
    assert [w for w, _ in own][:2] == ["cat", "Dogs"]  # the caller's own spelling comes back
    assert tagger.knows("big cats") and not tagger.knows("qwxzzvk")


def test_every_class_is_reachable(services: Services) -> None:
    taxonomy: Taxonomy = services.joints.taxonomy()
    assert all(c.synset for c in taxonomy.classes)


# ------------------------------------------------------------------------------------------ over gRPC


@pytest.mark.parametrize(
    "photo", ["animals/mammals/cats/tiger.png", "food/fruit/banana.png", "animals/birds/ostrich.png"]
)
def test_tags_over_grpc_hold_no_two_forms_of_one_word(client: Client, photo: str) -> None:
    tags = client.tag((STAMPS / photo).read_bytes(), k=5)
    assert tags.mode == "hierarchy" and len(tags) == 5
    forms = [word_form(t.word) for t in tags]
    assert len(set(forms)) == 5, tags
    assert all(0 <= t.score <= 1 and abs(t.distance - (1 - t.score)) < 1e-6 for t in tags)
    name = Path(photo).stem
    assert name in [t.word for t in tags], tags


def test_the_nearest_words_mode_is_deduplicated_too(client: Client) -> None:
    tags = client.tag(LION.read_bytes(), k=10, mode="nearest_words")
    assert tags.mode == "nearest_words"
    forms = [word_form(t.word) for t in tags]
    assert len(forms) == len(set(forms)) == 10


def test_min_score_over_grpc(client: Client) -> None:
    everything = client.tag(LION.read_bytes(), k=20)
    floor = everything[2].score
    kept = client.tag(LION.read_bytes(), k=20, min_score=floor)
    assert [t.word for t in kept] == [t.word for t in everything if t.score >= floor]
    assert all(t.score >= floor for t in kept)


def test_own_vocabulary_in_the_hierarchy_names_what_it_cannot_score(client: Client) -> None:
    tags = client.tag(TIGER.read_bytes(), k=3, vocabulary=["big cat", "banana", "striped"])
    assert tags[0].word == "big cat"
    assert tags.unscored == ["striped"]  # an adjective: no ImageNet class or hypernym is named so
    assert [t.word for t in tags] == ["big cat", "banana"]


@pytest.mark.parametrize("min_score", [-0.1, 1.5, math.nan])
def test_bad_min_score_is_refused(client: Client, min_score: float) -> None:
    refused(
        lambda: client.tag(LION.read_bytes(), min_score=min_score),
        grpc.StatusCode.INVALID_ARGUMENT,
        "min_score",
    )


def test_an_unknown_mode_is_refused(client: Client) -> None:
    from visionsearch.v1 import visionsearch_pb2 as pb

    stub = client._tag  # the typed client only sends known modes; a raw request can carry any number
    with pytest.raises(grpc.RpcError) as info:
        stub.Tag(pb.TagRequest(image=LION.read_bytes(), k=3, mode=7), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mode" in info.value.details()


def test_client_refuses_an_unknown_mode_name(client: Client) -> None:
    with pytest.raises(ValueError, match="mode"):
        client.tag(LION.read_bytes(), mode="fuzzy")


def test_the_tag_bound_counts_what_the_top_classes_can_name(tagger: HierarchyTagger) -> None:
    """training.tag_bound: a hierarchy word over the top classes hits the photo's name or its parent."""
    from training.tag_bound import bounds, reachable
    from training.zero_shot import TagTruth

    class lemma:
        @staticmethod
        def morphy(w: str, pos: str) -> str | None:
            return w[:-1] if w.endswith("s") else None

    lion = TagTruth(0, "lion", frozenset({"lion"}), frozenset({"big cat", "cat"}))
    sure = one_hot(("lion", 1.0))[0]
    wrong_first = one_hot(("chow", 0.6), ("lion", 0.4))[0]
    assert reachable(tagger, sure, lion, 1, lemma)
    assert not reachable(tagger, wrong_first, lion, 1, lemma)  # a chow's chain names no cat
    assert reachable(tagger, wrong_first, lion, 5, lemma)
    assert reachable(tagger, wrong_first, lion, None, lemma)
    crow = TagTruth(1, "crow", frozenset({"crow"}), frozenset({"corvine bird"}))
    assert not reachable(tagger, sure, crow, 1, lemma)  # a lion's chain names no corvine bird
    assert reachable(tagger, sure, crow, None, lemma)  # the magpie's and the jay's do
    got = bounds(tagger, np.stack([sure, wrong_first]), [lion, lion], lemma)
    assert got == {"top_1": 0.5, "top_5": 1.0, "top_10": 1.0}
