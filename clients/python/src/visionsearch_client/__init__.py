"""Python client for visionsearch: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from visionsearch_client._convert import (
    CollectionInfo,
    Hit,
    Hits,
    Hybrid,
    Item,
    StoredItem,
    Tags,
    VisionSearchError,
    WordHit,
)
from visionsearch_client.aio import AsyncClient
from visionsearch_client.client import Client

__all__ = [
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "Hit",
    "Hits",
    "Hybrid",
    "Item",
    "StoredItem",
    "Tags",
    "VisionSearchError",
    "WordHit",
]
