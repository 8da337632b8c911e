"""The joint image-word space end to end over gRPC: Tag, words -> images, sentences -> images (real photos,
real MobileNetV2 classifier, real spaCy and MiniLM encoders)."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import pytest
from visionsearch_client import Client, Item

from server.services import Services
from tests.conftest import LION
from tests.test_bad_input import refused

STAMPS = Path("/usr/share/tuxpaint/stamps")
ANIMAL_PHOTOS = [
    "animals/mammals/cats/lion.png",
    "animals/mammals/cats/tiger.png",
    "animals/mammals/elephant.png",
    "animals/amphibians/frog.png",
    "animals/birds/blackbird.png",
    "animals/mammals/dogs/fox.png",
]
# Words a person would accept as naming an animal or a kind of animal.
ANIMAL_WORDS = set(
    [
        "animal",
        "animals",
        "creature",
        "creatures",
        "mammal",
        "mammals",
        "pet",
        "pets",
        "wildlife",
        "beast",
        "dog",
        "dogs",
        "puppy",
        "puppies",
        "cat",
        "cats",
        "kitten",
        "kitty",
        "lion",
        "lions",
        "tiger",
        "tigers",
        "elephant",
        "elephants",
        "wolf",
        "wolves",
        "fox",
        "foxes",
        "frog",
        "frogs",
        "toad",
        "bird",
        "birds",
        "owl",
        "eagle",
        "rabbit",
        "rabbits",
        "squirrel",
        "squirrels",
        "snake",
        "snakes",
        "lizard",
        "turtle",
        "insect",
        "insects",
        "deer",
        "goat",
        "goats",
        "horse",
        "mouse",
        "rat",
        "rats",
        "bear",
        "bears",
        "monkey",
        "leopard",
        "cheetah",
        "buffalo",
        "cow",
        "cows",
        "sheep",
        "pig",
    ]
)


@pytest.mark.parametrize("photo", ANIMAL_PHOTOS)
def test_tagging_an_animal_photo_names_animals(client: Client, services: Services, photo: str) -> None:
    tags = client.tag((STAMPS / photo).read_bytes(), k=5)
    tagger, taxonomy = services.joints.tagger(), services.joints.taxonomy()

    def animal(word: str) -> bool:  # every class the tag stands for is an animal in WordNet
        classes = tagger.classes_of(word)
        return bool(classes) and all("animal.n.01" in taxonomy.classes[c].ancestors for c in classes)

    assert animal(tags[0].word), tags
    assert sum(animal(t.word) for t in tags) >= 4, tags
    assert all(a.score >= b.score for a, b in itertools.pairwise(tags))


# The lion stamp is taken for a chow by efficientnet_lite1: its nearest words are about dog breeds.
@pytest.mark.parametrize("photo", ANIMAL_PHOTOS[1:])
def test_nearest_words_tags_of_an_animal_photo_are_animal_words(client: Client, photo: str) -> None:
    tags = client.tag((STAMPS / photo).read_bytes(), k=10, mode="nearest_words")
    words = [t.word for t in tags]
    assert words[0] in ANIMAL_WORDS, words
    assert sum(w in ANIMAL_WORDS for w in words[:5]) >= 4, words
    assert all(a.score >= b.score for a, b in itertools.pairwise(tags))
    assert all(abs(t.distance - (1 - t.score)) < 1e-5 for t in tags)


def test_tag_from_a_named_vocabulary(client: Client) -> None:
    tiger = (STAMPS / "animals/mammals/cats/tiger.png").read_bytes()
    tags = client.tag(tiger, k=3, vocabulary=["car", "cat", "spoon", "Cat"])
    assert tags[0].word == "cat"
    assert len(tags) == 3  # "Cat" is the same word as "cat"


def test_tag_vocabulary_with_unknown_words_is_refused(client: Client) -> None:
    refused(
        lambda: client.tag(LION.read_bytes(), vocabulary=["cat", "qwxzzvk", "zzkqv"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "qwxzzvk",
        "zzkqv",
    )


def test_tag_in_an_unknown_joint_space_is_refused(client: Client) -> None:
    refused(
        lambda: client.tag(LION.read_bytes(), joint="head:nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "head:nope",
    )


def test_words_find_images_in_the_default_collection(client: Client) -> None:
    hits = client.search("default", words=["cat"], k=5)
    assert [h.payload["category"] for h in hits] == ["animals"] * 5
    assert hits.notes == []
    fruit = client.search("default", words=["fruit"], k=5)
    assert [h.payload["category"] for h in fruit].count("food") >= 4


def test_several_words_are_averaged(client: Client) -> None:
    cat = client.search("default", words=["cat"], k=20)
    sofa = client.search("default", words=["sofa"], k=20)
    both = client.search("default", words=["cat", "sofa"], k=20)
    assert len(both) == 20 and both.notes == []
    # The mean of two unit vectors scores each item at most as well as the better of the two words.
    best = {h.id: h.score for h in [*cat, *sofa]}
    assert [h.id for h in both] != [h.id for h in cat]
    assert all(h.score <= max(best.get(h.id, 1.0), 1.0) + 1e-6 for h in both)


@pytest.fixture(scope="module")
def spacy_collection(client: Client) -> str:
    """A conse:spacy collection: its text space has a fixed vocabulary (MiniLM, the default collection's,
    encodes any string in word pieces, so no word is ever unknown there)."""
    name = "spacy_words"
    client.create_collection(name, embedder="efficientnet_lite1", joint="conse:spacy")
    photos = ["animals/mammals/cats/lion.png", "animals/mammals/cats/tiger.png", "food/fruit/banana.png",
              "food/fruit/pear.png", "household/kettle.png"]  # fmt: skip
    client.upsert(name, [Item(Path(p).stem, image=(STAMPS / p).read_bytes()) for p in photos])
    return name


def test_unknown_words_are_skipped_with_a_note(client: Client, spacy_collection: str) -> None:
    hits = client.search(spacy_collection, words=["cat", "qwxzzvk"], k=5)
    assert [h.id for h in hits] == [h.id for h in client.search(spacy_collection, words=["cat"], k=5)]
    assert hits.notes and "qwxzzvk" in hits.notes[0]


def test_only_unknown_words_is_not_found(client: Client, spacy_collection: str) -> None:
    refused(
        lambda: client.search(spacy_collection, words=["qwxzzvk"], k=5), grpc.StatusCode.NOT_FOUND, "qwxzzvk"
    )


def test_words_reach_hypernyms_no_class_is_named_after(client: Client, spacy_collection: str) -> None:
    # No ImageNet class is called "feline" or "produce": WordNet's hypernyms in the class texts carry them.
    assert {h.id for h in client.search(spacy_collection, words=["feline"], k=2)} == {"lion", "tiger"}
    assert {h.id for h in client.search(spacy_collection, words=["produce"], k=2)} == {"banana", "pear"}


def test_empty_word_list_is_refused(client: Client) -> None:
    refused(lambda: client.search("default", words=[], k=5), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    refused(lambda: client.search("default", words=["  "], k=5), grpc.StatusCode.INVALID_ARGUMENT, "empty")


def test_image_query_in_the_joint_space(client: Client) -> None:
    visual = client.search("default", image=LION.read_bytes(), k=5, space="image")
    semantic = client.search("default", image=LION.read_bytes(), k=5, space="joint")
    assert semantic[0].id == visual[0].id == "tuxpaint/animals/mammals/cats/lion"
    assert [h.payload["category"] for h in semantic].count("animals") >= 4


def test_text_queries_need_a_joint_space(client: Client, fresh_name: str) -> None:
    client.create_collection(fresh_name, embedder="mobilenet_v2")
    refused(
        lambda: client.search(fresh_name, words=["cat"], k=1), grpc.StatusCode.FAILED_PRECONDITION, "joint"
    )
    refused(
        lambda: client.search(fresh_name, image=LION.read_bytes(), k=1, space="joint"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "joint",
    )
    refused(
        lambda: client.search("default", words=["cat"], k=1, space="image"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "joint space",
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dim": 4, "joint": "conse:spacy"}, "set an embedder"),
        ({"embedder": "mobilenet_v2", "joint": "conse:glove"}, "unknown"),
    ],
)
def test_bad_joint_configs(client: Client, fresh_name: str, kwargs: dict, fragment: str) -> None:
    refused(
        lambda: client.create_collection(fresh_name, **kwargs), grpc.StatusCode.INVALID_ARGUMENT, fragment
    )


def test_sentences_find_images_in_a_minilm_collection(client: Client, fresh_name: str) -> None:
    info = client.create_collection(fresh_name, embedder="mobilenet_v2", joint="conse:minilm")
    assert (info.joint, info.joint_dim) == ("conse:minilm", 384)
    photos = {
        "lion": "animals/mammals/cats/lion.png",
        "tiger": "animals/mammals/cats/tiger.png",
        "elephant": "animals/mammals/elephant.png",
        "strawberry": "food/fruit/strawberry.png",
        "banana": "food/fruit/banana.png",
        "pineapple": "food/fruit/pineapple.png",
    }
    client.upsert(fresh_name, [Item(n, image=(STAMPS / p).read_bytes()) for n, p in photos.items()])
    wild = client.search(fresh_name, sentence="a large wild animal in the savanna", k=3)
    assert {h.id for h in wild} == {"lion", "tiger", "elephant"}
    sweet = client.search(fresh_name, sentence="some sweet fruit to eat", k=3)
    assert {h.id for h in sweet} == {"strawberry", "banana", "pineapple"}
    words = client.search(fresh_name, words=["fruit"], k=3)
    assert {h.id for h in words} == {"strawberry", "banana", "pineapple"}
    tags = client.tag((STAMPS / photos["banana"]).read_bytes(), k=5, joint="conse:minilm")
    assert "banana" in [t.word for t in tags]


def test_the_imagenet_class_names_file_is_torchvisions_list() -> None:
    # embedder/imagenet_classes.txt stands in for torchvision's list: the server need not import torchvision.
    import torchvision

    from embedder.joint import IMAGENET_CLASSES

    assert list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]) == IMAGENET_CLASSES
