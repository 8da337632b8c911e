"""All collections of a data folder: create, open at start, list, drop.

A collection that cannot be opened without losing data does not stop the others: it is kept aside as
``Damaged`` with the reason, reported by ListCollections/GetCollection and health, and every call on it gets
DATA_LOSS until it is repaired offline (``visionsearch-admin``) or dropped.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from server.errors import Error, ServiceError, fail, quote
from server.storage.collection import NAME_RE, Collection, CollectionSettings
from server.storage.milvus import MilvusBackend, MilvusCollection
from server.storage.recovery import CollectionDamaged, config_bytes, read_config
from server.storage.snapshot import write_atomic

log = logging.getLogger("visionsearch.store")


# Settings that only an empty collection may change: re-indexing in place would stall its writers.
STRUCTURAL = ("index", "hnsw_connectivity", "hnsw_expansion_add", "vector_dtype")


AnyCollection = Collection | MilvusCollection


@dataclass(frozen=True)
class Damaged:
    name: str
    folder: Path
    reason: str
    settings: CollectionSettings | None  # when config.json still says what the collection was


class CollectionStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        known_embedders: dict[str, int],
        known_joints: Callable[[], dict[str, int]],
        fsync: bool,
        snapshot_wal_bytes: int,
        milvus: MilvusBackend | None = None,
    ):
        self.milvus = milvus
        self.root = data_dir / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_embedders = known_embedders
        self._known_joints = known_joints
        self._kw = {"fsync": fsync, "snapshot_wal_bytes": snapshot_wal_bytes}
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self.damaged: dict[str, Damaged] = {}
        trash = self.root / ".trash"
        if trash.exists():
            shutil.rmtree(trash)  # drops that a crash interrupted
        for leftover in self.root.glob(".creating-*"):
            shutil.rmtree(leftover)  # creations that a crash interrupted: never acknowledged
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                self._open(folder)

    def _open(self, folder: Path) -> None:
        if not any(folder.iterdir()):
            log.warning("removing the empty folder %s (left by an interrupted creation)", folder)
            folder.rmdir()
            return
        try:
            c = Collection.open(folder, **self._kw)
        except CollectionDamaged as e:
            self._mark_damaged(folder, e.reason)
            return
        except Exception as e:  # anything unforeseen in one folder must not stop the server
            log.exception("collection %s could not be opened", folder.name)
            self._mark_damaged(folder, f"could not be opened ({type(e).__name__}: {str(e)[:200]})")
            return
        self._collections[c.name] = c
        log.info("opened collection %s: %d items", c.name, len(c))

    def _mark_damaged(self, folder: Path, reason: str) -> None:
        raw, _ = read_config(folder)
        try:
            settings = CollectionSettings.from_dict(raw) if raw else None
        except TypeError:
            settings = None
        self.damaged[folder.name] = Damaged(folder.name, folder, reason, settings)
        log.error("collection %s is damaged and not served: %s", folder.name, reason)

    def create(self, settings: CollectionSettings) -> AnyCollection:
        if settings.dim == 0 and settings.embedder in self._known_embedders:
            settings = dataclasses.replace(settings, dim=self._known_embedders[settings.embedder])
        joints = self._known_joints()  # asked each time: heads trained while the server runs count too
        if settings.joint in joints:
            settings = dataclasses.replace(settings, joint_dim=joints[settings.joint])
        settings.validate(self._known_embedders, joints)
        with self._lock:
            if settings.name in self._collections:
                fail(Error.ALREADY_EXISTS, f"collection {settings.name!r} already exists")
            if settings.backend == "milvus":
                return self._create_in_milvus(settings)
            if self._in_milvus(settings.name):
                fail(Error.ALREADY_EXISTS, f"collection {settings.name!r} already exists in Milvus")
            if settings.name in self.damaged:
                fail(
                    Error.ALREADY_EXISTS,
                    f"collection {settings.name!r} exists but is damaged: "
                    "repair it with visionsearch-admin or drop it first",
                )
            folder = self.root / settings.name
            if folder.exists():
                # Not a collection we serve: what an interrupted creation or drop left. Creation is atomic
                # (config.json exists before the folder has its name), so a folder without it holds no data.
                if (folder / "config.json").exists() or any(folder.glob("wal-*.log")):
                    fail(
                        Error.ALREADY_EXISTS,
                        f"the folder of collection {settings.name!r} holds data this server did not open: "
                        "restart the server to open it, or remove the folder",
                    )
                shutil.rmtree(folder)
            c = Collection.create(folder, settings, **self._kw)
            self._collections[settings.name] = c
            return c

    def _in_milvus(self, name: str) -> bool:
        """Whether Milvus holds a collection of this name; a Milvus that does not answer holds none (the local
        collections must not depend on it)."""
        if self.milvus is None:
            return False
        try:
            return self.milvus.settings_of(name) is not None
        except ServiceError as e:
            log.warning("could not ask Milvus about %r: %s", name, e.message)
            return False

    def _create_in_milvus(self, settings: CollectionSettings) -> MilvusCollection:
        if self.milvus is None:
            fail(
                Error.PRECONDITION,
                "this server has no Milvus: start it with --milvus-uri (VISIONSEARCH_MILVUS_URI) to create "
                "collections with backend 'milvus'",
            )
        if settings.name in self.damaged or (self.root / settings.name).exists():
            fail(Error.ALREADY_EXISTS, f"collection {settings.name!r} already exists on this server")
        if self.milvus.settings_of(settings.name) is not None:
            fail(Error.ALREADY_EXISTS, f"collection {settings.name!r} already exists in Milvus")
        return self.milvus.create(settings)

    def update(self, name: str, changes: dict[str, object]) -> AnyCollection:
        """Apply setting changes (already validated by type); only an empty collection may change them."""
        with self._lock:
            c = self.get(name)
            settings = dataclasses.replace(c.settings, **changes)  # type: ignore[arg-type]
            if settings == c.settings:
                return c
            settings.validate(self._known_embedders, self._known_joints())
            structural = [k for k in STRUCTURAL if getattr(settings, k) != getattr(c.settings, k)]
            if isinstance(c, MilvusCollection):
                if structural:
                    fail(Error.PRECONDITION, f"collection {name!r} is in Milvus, which chooses its own index")
                c.reconfigure(settings)
                return c
            if not structural:
                c.reconfigure(settings)  # the recall target and payload indexes change in place
                return c
            if len(c):
                fail(
                    Error.PRECONDITION,
                    f"collection {name!r} holds {len(c)} items: its index ({', '.join(structural)}) can only "
                    "change while it is empty; create a new collection with the index you want and copy the "
                    "items into it",
                )
            c.close(reason="reconfigured by UpdateCollection")
            write_atomic(c.folder / "config.json", config_bytes(dataclasses.asdict(settings)))
            again = Collection.open(c.folder, **self._kw)
            self._collections[name] = again
            return again

    def get(self, name: str) -> AnyCollection:
        c = self._collections.get(name)
        if c is None:
            if self.milvus is not None and NAME_RE.fullmatch(name) and name not in self.damaged:
                # Read from Milvus on every call: another server may have created or dropped it.
                settings = self.milvus.settings_of(name)
                if settings is not None:
                    return MilvusCollection(self.milvus, settings)
            if name in self.damaged:
                fail(
                    Error.DATA_LOSS,
                    f"collection {name!r} is damaged and not served: {self.damaged[name].reason}",
                )
            if not NAME_RE.fullmatch(name):
                fail(
                    Error.BAD_REQUEST,
                    f"collection name {quote(name)} must be 1-64 characters of [A-Za-z0-9_-]",
                )
            fail(Error.NOT_FOUND, f"collection {name!r} does not exist; create it first or list collections")
        return c

    def get_local(self, name: str) -> Collection:
        """A collection of this data folder (the default collection, tools)."""
        c = self._collections.get(name)
        return c if c is not None else self._missing(name)  # not `or`: an empty collection is falsy

    def _missing(self, name: str) -> NoReturn:
        self.get(name)  # raises the precise status
        fail(Error.NOT_FOUND, f"collection {name!r} is not in this server's data folder")

    def list(self) -> builtins.list[AnyCollection]:
        local: builtins.list[AnyCollection] = [self._collections[n] for n in sorted(self._collections)]
        if self.milvus is None:
            return local
        try:
            names = self.milvus.names()
        except ServiceError as e:  # Milvus down: the local collections are still listed and served
            log.warning("listing without the Milvus collections: %s", e.message)
            return local
        remote = [MilvusCollection(self.milvus, s) for n in names if (s := self.milvus.settings_of(n))]
        return sorted([*local, *remote], key=lambda c: c.name)

    def list_damaged(self) -> builtins.list[Damaged]:
        return [self.damaged[n] for n in sorted(self.damaged)]

    def drop(self, name: str) -> None:
        with self._lock:
            local = name in self._collections or name in self.damaged
            if not local and self.milvus is not None and self.milvus.settings_of(name) is not None:
                self.milvus.drop(name)
                return
            if name in self.damaged:
                folder = self.damaged.pop(name).folder
            else:
                c = self.get_local(name)
                del self._collections[name]
                c.close(reason="dropped", flush=False)
                folder = c.folder
            trash = self.root / ".trash"
            trash.mkdir(exist_ok=True)
            target = trash / f"{name}-{uuid.uuid4().hex}"
            folder.rename(target)  # atomic: the collection is gone from disk before the files are
            shutil.rmtree(target)

    def close(self) -> None:
        with self._lock:
            for c in self._collections.values():
                c.close()
