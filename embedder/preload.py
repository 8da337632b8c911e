"""What the embedding workers' fork server loads once, before it forks them: torch and the network.

Workers forked from one process share those pages copy-on-write (a forward only reads the weights), so two
workers cost about one in memory (bench/footprint.py). The fork server is a process of its own, started
before the serving process runs any thread, so forking it is safe where forking the server is not.
"""

from __future__ import annotations

from pathlib import Path

import torch  # noqa: F401 - imported here to be shared by every worker

from embedder import assets
from embedder.image import ImageNetwork

_NETWORKS: dict[str, ImageNetwork] = {}


def network(weights: str) -> ImageNetwork:
    """The network for ``weights``: the one loaded before the fork when it is the default's."""
    if weights not in _NETWORKS:
        _NETWORKS[weights] = ImageNetwork(weights)
    return _NETWORKS[weights]


def _load_default() -> None:
    try:
        path = str(Path(assets.mobilenet_v2_weights()))
    except Exception:  # a missing asset is reported where it is used, not in the fork server
        return
    network(path)


_load_default()
