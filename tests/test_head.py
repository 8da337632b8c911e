"""The DeViSE head: learning, checkpoints, the training CLI's refusals, and serving a head over gRPC."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from visionsearch_client import Client, Item

from embedder.head import DeviseHead, HeadMeta, HeadMismatch, load_head, read_meta, save_head
from server.app import Running
from tests.conftest import LION
from tests.test_bad_input import refused
from training.devise import TrainConfig, train_head
from training.train import main as train_main

STAMPS = Path("/usr/share/tuxpaint/stamps")


def _blobs(seed: int, classes: int, per_class: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32) * 3
    labels = np.repeat(np.arange(classes), per_class)
    feats = np.maximum(centres[labels] + rng.standard_normal((len(labels), dim)).astype(np.float32), 0)
    targets = rng.standard_normal((classes, 12)).astype(np.float32)
    return feats, labels, targets / np.linalg.norm(targets, axis=1, keepdims=True)


@pytest.mark.parametrize("loss", ["hinge", "cosine"])
def test_head_learns_to_map_classes_onto_their_label_vectors(loss: str) -> None:
    feats, labels, targets = _blobs(0, 5, 80, 32)
    head = train_head(feats, labels, targets, TrainConfig(loss=loss, epochs=15, hidden=64, batch=64, lr=3e-3))
    with torch.inference_mode():
        out = head(torch.from_numpy(feats)).numpy()
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert (np.argmax(out @ targets.T, axis=1) == labels).mean() > 0.95


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    feats, labels, targets = _blobs(1, 3, 20, 16)
    head = train_head(feats, labels, targets, TrainConfig(epochs=2, hidden=32))
    meta = HeadMeta("mobilenet_v2", 96, 16, "spacy", 12, 32, "hinge", ["a", "b", "c"], ["d"], "synthetic")
    path = tmp_path / "h.safetensors"
    save_head(path, head, meta)
    again, meta2 = load_head(path)
    assert meta2 == meta == read_meta(path)
    x = torch.from_numpy(feats[:5])
    with torch.inference_mode():
        np.testing.assert_allclose(again(x).numpy(), head(x).numpy(), atol=1e-6)


def test_a_foreign_safetensors_file_is_not_a_head(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(HeadMismatch, match="not a visionsearch head"):
        read_meta(path)


def _stamp_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    for label, files in classes.items():
        (root / label).mkdir(parents=True)
        for f in files:
            shutil.copy(STAMPS / f, root / label / Path(f).name)
    return root


FRUIT = [
    "food/fruit/banana.png",
    "food/fruit/pineapple.png",
    "food/fruit/strawberry.png",
    "food/fruit/pear.png",
]
CATS = ["animals/mammals/cats/lion.png", "animals/mammals/cats/tiger.png", "animals/mammals/cats/lion-2.png"]
DOGS = ["animals/mammals/dogs/fox.png", "animals/mammals/dogs/dingo.png"]


def _train(tmp_path: Path, data: Path, *extra: str) -> int:
    return train_main(
        ["--dataset", str(data), "--data-dir", str(tmp_path), "--size", "64", "--epochs", "3", *extra]
    )


def test_training_refuses_a_single_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _stamp_folder(tmp_path / "one", {"fruit": FRUIT})
    assert _train(tmp_path, data) == 2
    assert "at least two classes" in capsys.readouterr().err


def test_training_refuses_holding_out_all_but_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _stamp_folder(tmp_path / "two", {"fruit": FRUIT, "cat": CATS})
    assert _train(tmp_path, data, "--holdout", "cat") == 2
    assert "at least two classes" in capsys.readouterr().err


def test_training_refuses_labels_outside_the_vocabulary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _stamp_folder(tmp_path / "odd", {"fruit": FRUIT, "qwxzzvk": CATS})
    assert _train(tmp_path, data) == 2
    assert "qwxzzvk" in capsys.readouterr().err


def test_a_trained_head_is_served_per_collection(
    server: Running, client: Client, tmp_path: Path, fresh_name: str
) -> None:
    data = _stamp_folder(tmp_path / "pets", {"fruit": FRUIT, "cat": CATS, "dog": DOGS})
    heads_home = server.services.config.data_dir
    assert _train(heads_home, data, "--name", "pets", "--holdout", "dog") == 0
    meta = read_meta(heads_home / "heads" / "pets.safetensors")
    assert (meta.labels, meta.held_out, meta.input_size) == (["cat", "fruit"], ["dog"], 64)

    refused(
        lambda: client.create_collection(fresh_name, embedder="mobilenet_v2", joint="head:pets"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "64 px",
    )
    info = client.create_collection(fresh_name, embedder="mobilenet_v2@64", joint="head:pets")
    assert info.joint_dim == 300
    photos = {"banana": FRUIT[0], "pineapple": FRUIT[1], "lion": CATS[0], "tiger": CATS[1]}
    client.upsert(fresh_name, [Item(n, image=(STAMPS / p).read_bytes()) for n, p in photos.items()])
    hits = client.search(fresh_name, words=["fruit"], k=2)
    assert {h.id for h in hits} == {"banana", "pineapple"}
    tags = client.tag(LION.read_bytes(), k=2, vocabulary=["cat", "fruit"], joint="head:pets")
    assert tags[0].word == "cat"

    # The same head mixed with ConSE in its text space (training/heads_eval.py measures what the mix gains).
    mixed = client.create_collection(
        fresh_name[:56] + "_mix", embedder="mobilenet_v2@64", joint="head+conse:pets"
    )
    assert (mixed.joint, mixed.joint_dim) == ("head+conse:pets", 300)
    client.upsert(mixed.name, [Item(n, image=(STAMPS / p).read_bytes()) for n, p in photos.items()])
    assert {h.id for h in client.search(mixed.name, words=["fruit"], k=2)} == {"banana", "pineapple"}


def test_mismatched_heads_are_refused(server: Running, client: Client, fresh_name: str) -> None:
    heads = server.services.config.data_dir / "heads"
    base = HeadMeta("mobilenet_v2", 224, 1280, "spacy", 300, 8, "hinge", ["a", "b"])
    for name, meta in {
        "other-backbone": dataclasses.replace(base, backbone="resnet50", feature_dim=2048),
        "other-width": dataclasses.replace(base, text="minilm", dim=300),
    }.items():
        save_head(heads / f"{name}.safetensors", DeviseHead(meta.feature_dim, 8, meta.dim), meta)
        refused(
            lambda n=name: client.create_collection(fresh_name, embedder="mobilenet_v2", joint=f"head:{n}"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "trained on" if name == "other-backbone" else "text space",
        )
        refused(
            lambda n=name: client.tag(LION.read_bytes(), joint=f"head:{n}"),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


def test_a_head_towards_minilm_takes_sentences(
    server: Running, client: Client, tmp_path: Path, fresh_name: str
) -> None:
    data = _stamp_folder(tmp_path / "pets", {"fruit": FRUIT, "wild cat": CATS})
    heads_home = server.services.config.data_dir
    assert _train(heads_home, data, "--name", "pets-minilm", "--text", "minilm") == 0
    info = client.create_collection(fresh_name, embedder="mobilenet_v2@64", joint="head:pets-minilm")
    assert info.joint_dim == 384
    photos = {"banana": FRUIT[0], "pear": FRUIT[3], "lion": CATS[0], "tiger": CATS[1]}
    client.upsert(fresh_name, [Item(n, image=(STAMPS / p).read_bytes()) for n, p in photos.items()])
    hits = client.search(fresh_name, sentence="a big striped predator", k=2)
    assert {h.id for h in hits} == {"lion", "tiger"}
