"""WordNet 3.0 from Debian's files through nltk, and the ImageNet classes' places in it (real WordNet)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from embedder import wordnet
from embedder.errors import AssetMissing
from embedder.joint import IMAGENET_CLASSES
from embedder.taxonomy import Taxonomy


@pytest.fixture(scope="module")
def wn(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return wordnet.open_wordnet(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def mapped(wn) -> list[wordnet.ClassSynset | None]:  # type: ignore[no-untyped-def]
    return wordnet.map_imagenet_classes(wn, IMAGENET_CLASSES)


def test_every_imagenet_class_maps_and_offsets_strictly_increase(mapped) -> None:  # type: ignore[no-untyped-def]
    assert all(m is not None for m in mapped)
    offsets = [m.offset for m in mapped]
    assert all(a < b for a, b in itertools.pairwise(offsets))
    # ImageNet's first and last classes by WordNet id: tench n01440764, toilet tissue n15075141.
    assert (offsets[0], offsets[-1]) == (1440764, 15075141)


def test_twice_named_classes_get_their_own_senses(mapped) -> None:  # type: ignore[no-untyped-def]
    by_name = {IMAGENET_CLASSES[m.index]: m.synset for m in mapped}
    assert by_name["crane bird"] == "crane.n.05"  # the bird (index 134), not the machine
    assert by_name["crane"] == "crane.n.04"  # the lifting device (index 517)
    assert by_name["maillot tank suit"] == "maillot.n.01"
    assert by_name["chow"] == "chow.n.03"  # the dog breed, not food


def test_tabby_climbs_to_mammal(wn, mapped) -> None:  # type: ignore[no-untyped-def]
    tabby = mapped[IMAGENET_CLASSES.index("tabby")]
    chain = [s.name() for s in wordnet.hypernym_chain(wn.synset(tabby.synset))]
    assert chain[:6] == [
        "domestic_cat.n.01", "cat.n.01", "feline.n.01", "carnivore.n.01", "placental.n.01", "mammal.n.01",
    ]  # fmt: skip
    assert "animal.n.01" in chain


def test_the_taxonomy_is_cached_and_reloads_equal(tmp_path: Path) -> None:
    first = Taxonomy.load(IMAGENET_CLASSES, tmp_path)
    assert list(tmp_path.glob("imagenet-wordnet-*.json"))
    again = Taxonomy.load(IMAGENET_CLASSES, tmp_path)
    assert again == first
    lion = first.classes[IMAGENET_CLASSES.index("lion")]
    assert lion.chain[0] == "big_cat.n.01" and first.synsets["big_cat.n.01"].lemmas[0] == "big cat"


def test_missing_wordnet_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "nowhere")
    with pytest.raises(AssetMissing, match="apt-get install wordnet-base"):
        wordnet.open_wordnet(tmp_path / "cache")
