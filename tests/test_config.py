from pathlib import Path

import pytest

from server.config import Config


def test_defaults() -> None:
    c = Config.load([], env={})
    assert c == Config()


def test_env_then_flag_precedence() -> None:
    env = {"VISIONSEARCH_WORKERS": "3", "VISIONSEARCH_DATA_DIR": "/tmp/x", "VISIONSEARCH_FSYNC": "false"}
    c = Config.load([], env=env)
    assert (c.workers, c.data_dir, c.fsync) == (3, Path("/tmp/x"), False)
    c = Config.load(["--workers", "5", "--fsync"], env=env)
    assert (c.workers, c.fsync) == (5, True)


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--workers", "many"], {}, "workers: expected int"),
        ([], {"VISIONSEARCH_FSYNC": "maybe"}, "fsync: expected true or false"),
        (["--max-k", "0"], {}, "max_k must be >= 1"),
    ],
)
def test_bad_values_are_explained(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Config.load(argv, env=env)


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.workers = 2  # type: ignore[misc]


def test_backbone_names_are_the_embedders() -> None:
    from embedder.backbones import BACKBONES
    from server.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES
    assert Config.load(["--backbone", "mobilenet_v2"], env={}).backbone == "mobilenet_v2"
    with pytest.raises(ValueError, match="backbone must be one of"):
        Config.load(["--backbone", "resnet50"], env={})
