"""Behaviour on the real default collection: Tux Paint photos, Fashion-MNIST, spaCy word vectors."""

from __future__ import annotations

import itertools

import numpy as np
from visionsearch_client import Client

from tests.conftest import LION, TEST_FASHION_SAMPLE


def test_said_neighbours_match_the_seed(client: Client) -> None:
    hits = client.nearest_words("said", k=10)
    words = [h.word for h in hits]
    assert words[0] == "said" and hits[0].distance < 1e-5
    assert {"told", "says"} <= set(words)
    assert "warned" in words
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_query_words_are_lower_cased(client: Client) -> None:
    assert [h.word for h in client.nearest_words("SAID", k=3)] == [
        h.word for h in client.nearest_words("said", k=3)
    ]


def test_cat_stamp_returns_animals_before_anything_else(client: Client) -> None:
    hits = client.search("default", image=LION.read_bytes(), k=10)
    categories = [h.payload["category"] for h in hits]
    assert hits[0].id == "tuxpaint/animals/mammals/cats/lion" and hits[0].score > 0.999
    first_other = next((n for n, c in enumerate(categories) if c != "animals"), len(categories))
    assert first_other >= 5, categories
    assert all(c != "animals" for c in categories[first_other:]), categories


def test_clothing_photo_finds_clothing(client: Client) -> None:
    trousers = [
        i.id for i in client.get_items("default", [f"fashion-mnist/test/{n:05d}" for n in range(200)])
        if i.payload["label"] == "Trouser"
    ]  # fmt: skip
    hits = client.search("default", id=trousers[0], k=5)
    assert trousers[0] not in [h.id for h in hits]  # an item is not its own neighbour
    assert [h.payload["source"] for h in hits] == ["fashion-mnist"] * 5
    assert sum(h.payload["label"] == "Trouser" for h in hits) >= 4


def test_default_collection_holds_both_sets(client: Client) -> None:
    info = client.get_collection("default")
    assert info.dim == 1280 and info.embedder == "efficientnet_lite1" and info.metric == "cosine"
    assert info.joint == "conse:minilm"
    assert info.count >= 400 + TEST_FASHION_SAMPLE


def test_embed_image_matches_search_by_vector(client: Client) -> None:
    vec = client.embed_image(LION.read_bytes())
    assert vec.shape == (1280,) and np.isfinite(vec).all() and (vec >= 0).all()  # post-ReLU features
    by_vector = client.search("default", vector=vec, k=5)
    by_image = client.search("default", image=LION.read_bytes(), k=5)
    assert [h.id for h in by_vector] == [h.id for h in by_image]
    np.testing.assert_allclose([h.score for h in by_vector], [h.score for h in by_image], rtol=1e-5)


def test_embed_word(client: Client) -> None:
    cat = client.embed_word("cat")
    dog = client.embed_word("Dog")
    car = client.embed_word("car")
    assert cat.shape == (300,)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(cat, dog) > cos(cat, car)


def test_hits_carry_payload_and_vector_on_request(client: Client) -> None:
    hit = client.search("default", image=LION.read_bytes(), k=1, with_payload=True, with_vector=True)[0]
    assert hit.payload["label"] == "lion" and hit.payload["source"] == "tuxpaint"
    assert hit.vector is not None and abs(float(np.linalg.norm(hit.vector)) - 1) < 1e-4
    bare = client.search("default", image=LION.read_bytes(), k=1, with_payload=False)[0]
    assert bare.payload == {} and bare.vector is None


def test_jpeg_webp_and_png_of_one_photo_embed_alike(client: Client) -> None:
    import io

    from PIL import Image

    rgba = Image.open(LION)
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    vectors = {}
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        flat.save(buf, fmt, quality=95)
        vectors[fmt] = client.embed_image(buf.getvalue())
    png = vectors["PNG"] / np.linalg.norm(vectors["PNG"])
    for fmt in ("JPEG", "WEBP"):
        other = vectors[fmt] / np.linalg.norm(vectors[fmt])
        assert float(png @ other) > 0.95, fmt
    # Alpha is composited on white: the transparent original embeds like the flattened copy.
    original = client.embed_image(LION.read_bytes())
    assert float(png @ (original / np.linalg.norm(original))) > 0.999
