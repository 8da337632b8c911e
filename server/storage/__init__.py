"""Collections on disk: a write-ahead log of upserts and deletes, write-then-rename snapshots, and the
in-memory exact index they rebuild at start."""

from server.storage.collection import Collection, CollectionSettings
from server.storage.store import AnyCollection, CollectionStore

__all__ = ["AnyCollection", "Collection", "CollectionSettings", "CollectionStore"]
