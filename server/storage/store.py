"""All collections of a data folder: create, open at start, list, drop."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from server.errors import Error, fail
from server.storage import snapshot
from server.storage.collection import NAME_RE, Collection, CollectionSettings

log = logging.getLogger("visionsearch.store")


class CollectionStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        known_embedders: dict[str, int],
        known_joints: Callable[[], dict[str, int]],
        fsync: bool,
        snapshot_wal_bytes: int,
    ):
        self.root = data_dir / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_embedders = known_embedders
        self._known_joints = known_joints
        self._kw = {"fsync": fsync, "snapshot_wal_bytes": snapshot_wal_bytes}
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        trash = self.root / ".trash"
        if trash.exists():
            shutil.rmtree(trash)  # drops that a crash interrupted
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and (folder / "config.json").exists():
                c = Collection.open(folder, **self._kw)
                self._collections[c.name] = c
                log.info("opened collection %s: %d items", c.name, len(c))

    def create(self, settings: CollectionSettings) -> Collection:
        if settings.dim == 0 and settings.embedder in self._known_embedders:
            settings = dataclasses.replace(settings, dim=self._known_embedders[settings.embedder])
        joints = self._known_joints()  # asked each time: heads trained while the server runs count too
        if settings.joint in joints:
            settings = dataclasses.replace(settings, joint_dim=joints[settings.joint])
        settings.validate(self._known_embedders, joints)
        with self._lock:
            if settings.name in self._collections:
                fail(Error.ALREADY_EXISTS, f"collection {settings.name!r} already exists")
            c = Collection.create(self.root / settings.name, settings, **self._kw)
            self._collections[settings.name] = c
            return c

    def update(self, name: str, index: str, recall_target: float) -> Collection:
        with self._lock:
            c = self.get(name)
            settings = dataclasses.replace(c.settings, index=index, recall_target=recall_target)
            if settings == c.settings:
                return c
            if len(c):
                fail(
                    Error.PRECONDITION,
                    f"collection {name!r} holds {len(c)} items: its index can only change while it is empty; "
                    "create a new collection with the index you want and copy the items into it",
                )
            settings.validate(self._known_embedders, self._known_joints())
            c.close()
            snapshot.write_atomic(c.folder / "config.json", json.dumps(dataclasses.asdict(settings)).encode())
            again = Collection.open(c.folder, **self._kw)
            self._collections[name] = again
            return again

    def get(self, name: str) -> Collection:
        c = self._collections.get(name)
        if c is None:
            if not NAME_RE.match(name):
                fail(Error.BAD_REQUEST, f"collection name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
            fail(Error.NOT_FOUND, f"collection {name!r} does not exist; create it first or list collections")
        return c

    def list(self) -> list[Collection]:
        return [self._collections[n] for n in sorted(self._collections)]

    def drop(self, name: str) -> None:
        with self._lock:
            c = self.get(name)
            del self._collections[name]
            c.close()
            trash = self.root / ".trash"
            trash.mkdir(exist_ok=True)
            target = trash / f"{name}-{uuid.uuid4().hex}"
            c.folder.rename(target)  # atomic: the collection is gone from disk before the files are
            shutil.rmtree(target)

    def close(self) -> None:
        with self._lock:
            for c in self._collections.values():
                c.close()
