"""What the embedding workers' fork server loads once, before it forks them: torch and the network.

Workers forked from one process share those pages copy-on-write (a forward only reads the weights), so two
workers cost about one in memory (bench/footprint.py). The fork server is a process of its own, started
before the serving process runs any thread, so forking it is safe where forking the server is not.

The fork server cannot see the server's flags, only its environment: it preloads the backbone named by
``VISIONSEARCH_BACKBONE`` (the server's default when unset). Workers of any other backbone load their own.
"""

from __future__ import annotations

import gc
import os

import torch  # noqa: F401 - imported here to be shared by every worker

from embedder.backbones import BACKBONES
from embedder.heap import release_free_memory
from embedder.image import ImageNetwork

DEFAULT_BACKBONE = "efficientnet_lite1"  # server/config.py's default, which this package may not import

_NETWORKS: dict[tuple[str, str], ImageNetwork] = {}


def network(weights: str, backbone: str) -> ImageNetwork:
    """The network for ``weights``: the one loaded before the fork when it is the preloaded one."""
    key = (weights, backbone)
    if key not in _NETWORKS:
        _NETWORKS[key] = ImageNetwork(weights, backbone)
    return _NETWORKS[key]


def _load_default() -> None:
    name = os.environ.get("VISIONSEARCH_BACKBONE", DEFAULT_BACKBONE)
    if name not in BACKBONES:
        return
    try:
        path = str(BACKBONES[name].weights())
    except Exception:  # a missing asset is reported where it is used, not in the fork server
        return
    network(path, name)


_load_default()
# A worker's cyclic collector would walk every object loaded here, writing to each one's header and so
# copying each page that holds one into the worker: frozen, those pages stay shared with the fork server.
gc.collect()
gc.freeze()
# Building the network freed a copy of it (the unfolded one, embedder.backbones) and the activations of the
# fold's check: handed back to the OS here, before any worker is forked, rather than kept in every heap.
release_free_memory()
