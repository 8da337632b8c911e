"""API keys with roles, read from a key file, and the check every call goes through.

The key file (``--api-keys FILE``) is JSON, written by ``visionsearch-admin keys add``; it holds no secret,
only each key's SHA-256 (keys are 32 random bytes, so a fast hash is enough: there is nothing to guess)::

    {"format": 1, "keys": [{"name": "ingest", "role": "write", "collections": ["shirts"], "sha256": "..."}]}

A key travels in ``authorization: Bearer <key>`` or ``api-key: <key>`` (the headers Qdrant, Milvus and TEI
callers already send). Its hash is compared with every stored hash in constant time. Roles nest: ``read``
(searches, tags, embeddings, reads), ``write`` (also upserts and deletes), ``admin`` (also collections).
A key may be limited to some collections. Logs name the key, never its secret. The file is re-read when it
changes (polled every second, or at once on SIGHUP); a file that does not load keeps the keys in force.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("visionsearch.auth")

ROLES = ("read", "write", "admin")
_RANK = {r: n for n, r in enumerate(ROLES)}
KEY_PREFIX = "vs_"
MAX_KEY_CHARS = 256

# The role each RPC needs. Every RPC of the API must be here: tests/test_auth.py walks the proto's RPC list,
# so a new RPC without a role fails it (and is refused to every key but admin's until it has one).
RPC_ROLES: dict[str, str] = {
    "/visionsearch.v1.EmbedService/Embed": "read",
    "/visionsearch.v1.SearchService/Search": "read",
    "/visionsearch.v1.SearchService/NearestWords": "read",
    "/visionsearch.v1.SearchService/SearchBatch": "read",
    "/visionsearch.v1.SearchService/Recommend": "read",
    "/visionsearch.v1.TagService/Tag": "read",
    "/visionsearch.v1.CollectionService/GetCollection": "read",
    "/visionsearch.v1.CollectionService/ListCollections": "read",
    "/visionsearch.v1.CollectionService/GetItems": "read",
    "/visionsearch.v1.CollectionService/Count": "read",
    "/visionsearch.v1.CollectionService/Scroll": "read",
    "/visionsearch.v1.CollectionService/Upsert": "write",
    "/visionsearch.v1.CollectionService/Delete": "write",
    "/visionsearch.v1.CollectionService/SetPayload": "write",
    "/visionsearch.v1.CollectionService/DeletePayloadKeys": "write",
    "/visionsearch.v1.CollectionService/CreateCollection": "admin",
    "/visionsearch.v1.CollectionService/DropCollection": "admin",
    "/visionsearch.v1.CollectionService/UpdateCollection": "admin",
    "/visionsearch.v1.ServerService/GetServerInfo": "read",
}


class KeyFileError(ValueError):
    """A key file the server refuses to start with (or to reload); the message says what to fix."""


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Key:
    name: str
    role: str
    collections: tuple[str, ...]  # empty: every collection
    sha256: bytes

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


# ------------------------------------------------------------------ the file


def read_keys(path: Path) -> list[Key]:
    """Load and validate a key file; raises ``KeyFileError`` naming the problem."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist: create it with `visionsearch-admin keys add {path} ...`"
        ) from None
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise KeyFileError(
            f"key file {path} is readable or writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            f"`chmod 600 {path}`"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise KeyFileError(f"key file {path} is not valid JSON ({str(e)[:100]})") from None
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("keys"), list):
        raise KeyFileError(f'key file {path} must be {{"format": 1, "keys": [...]}}')
    keys: list[Key] = []
    for n, entry in enumerate(doc["keys"]):
        where = f"key file {path}, key {n}"
        if not isinstance(entry, dict):
            raise KeyFileError(f"{where}: not an object")
        name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
        collections = entry.get("collections", [])
        if not isinstance(name, str) or not name or len(name) > 64:
            raise KeyFileError(f"{where}: `name` must be a string of 1-64 characters")
        if role not in ROLES:
            raise KeyFileError(
                f"{where} ({name!r}): role {str(role)[:40]!r} is not one of {', '.join(ROLES)}"
            )
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise KeyFileError(f"{where} ({name!r}): `sha256` must be 64 lower-case hex digits")
        if not isinstance(collections, list) or not all(isinstance(c, str) for c in collections):
            raise KeyFileError(f"{where} ({name!r}): `collections` must be a list of collection names")
        if any(k.name == name for k in keys):
            raise KeyFileError(f"{where}: the name {name!r} is used twice")
        keys.append(Key(name, role, tuple(collections), bytes.fromhex(digest)))
    return keys


def write_keys(path: Path, keys: Sequence[Key]) -> None:
    doc = {
        "format": 1,
        "keys": [
            {"name": k.name, "role": k.role, "collections": list(k.collections), "sha256": k.sha256.hex()}
            for k in keys
        ],
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_key(path: Path, name: str, role: str, collections: Sequence[str] = ()) -> str:
    """Add a key to ``path`` (created if missing) and return its secret, which is stored nowhere."""
    keys = read_keys(path) if path.exists() else []
    if role not in ROLES:
        raise KeyFileError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if any(k.name == name for k in keys):
        raise KeyFileError(f"a key named {name!r} exists already: remove it first or choose another name")
    secret = new_secret()
    write_keys(path, [*keys, Key(name, role, tuple(collections), bytes.fromhex(hash_key(secret)))])
    return secret


# ------------------------------------------------------------------ the check


def _header_keys(metadata: Sequence[tuple[str, Any]] | None) -> list[str]:
    found: list[str] = []
    for name, value in metadata or ():
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if name == "authorization":
            scheme, _, rest = text.partition(" ")
            if scheme.lower() != "bearer":
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the authorization header must be `Bearer <key>` (or send `api-key: <key>`)",
                )
            found.append(rest.strip())
        elif name == "api-key":
            found.append(text.strip())
    return found


class Authorizer:
    """The keys in force, reloaded when their file changes."""

    def __init__(self, path: Path, poll_s: float = 1.0) -> None:
        self.path = path
        self._keys = read_keys(path)  # refuse to start with a bad file
        self._mtime = self._stamp()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._watch, name="api-key-reload", daemon=True)
        self._thread.start()
        log.info("API keys: %d loaded from %s", len(self._keys), path)

    @property
    def keys(self) -> list[Key]:
        return self._keys

    def _stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return (0, 0, 0)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            if self._stamp() != self._mtime:
                self.reload()

    def reload(self) -> bool:
        stamp = self._stamp()
        try:
            keys = read_keys(self.path)
        except KeyFileError as e:
            log.error("API keys not reloaded, the keys in force stay: %s", e)
            self._mtime = stamp
            return False
        self._keys, self._mtime = keys, stamp
        log.info("API keys: %d reloaded from %s", len(keys), self.path)
        return True

    def close(self) -> None:
        self._stop.set()

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> Key:
        """The key a call presents; ``Denied`` (UNAUTHENTICATED) when there is none or it is unknown."""
        presented = _header_keys(metadata)
        if not presented:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs an API key: send `authorization: Bearer <key>` or `api-key: <key>`",
            )
        if len(set(presented)) > 1:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "send one API key, in one header, not several")
        secret = presented[0]
        if not secret:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the API key is empty")
        if len(secret) > MAX_KEY_CHARS:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the API key has {len(secret):,} characters; keys have {len(new_secret())}",
            )
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).digest()
        match: Key | None = None
        for key in self._keys:  # every entry, no early exit: the time taken says nothing about the keys
            if hmac.compare_digest(digest, key.sha256):
                match = key
        if match is None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        return match

    def authorize(self, key: Key, method: str, collection: str | None) -> None:
        """``Denied`` (PERMISSION_DENIED) when ``key`` may not call ``method`` on ``collection``."""
        needed = RPC_ROLES.get(method, "admin")
        rpc = method.rsplit("/", 1)[-1]
        if not key.may(needed):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"key {key.name!r} has role {key.role}; {rpc} needs role {needed}"
                + (" (or admin)" if needed != "admin" else ""),
            )
        if collection is not None and key.collections and collection not in key.collections:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"key {key.name!r} may use the collections {', '.join(key.collections)}, "
                f"not {collection[:64]!r}",
            )

    def allowed_collections(self, key: Key) -> tuple[str, ...]:
        return key.collections


def collection_of(request: Any) -> str | None:
    """The collection a request names, if its message has such a field."""
    fields = request.DESCRIPTOR.fields_by_name
    if "collection" in fields:
        return str(request.collection)
    if "name" in fields and request.DESCRIPTOR.name.endswith("CollectionRequest"):
        return str(request.name)
    if "config" in fields and request.DESCRIPTOR.name == "CreateCollectionRequest":
        return str(request.config.name)
    return None


# ------------------------------------------------------------------ services outside the API


def _deny_stream(denied: Denied) -> grpc.RpcMethodHandler:
    def behavior(requests: Any, context: grpc.ServicerContext) -> Any:
        context.abort(denied.code, denied.message)

    return grpc.stream_stream_rpc_method_handler(behavior)


def _deny_stream_aio(denied: Denied) -> grpc.RpcMethodHandler:
    async def behavior(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(denied.code, denied.message)

    return grpc.stream_stream_rpc_method_handler(behavior)


class ReflectionGate(grpc.ServerInterceptor):
    """Reflection answers any valid key (it describes the API, not the data); health answers everyone (load
    balancers probe it); the API's own RPCs are checked in ``server.handlers``."""

    def __init__(self, auth: Authorizer) -> None:
        self.auth = auth

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith("/grpc.reflection."):
            try:
                self.auth.identify(details.invocation_metadata)
            except Denied as d:
                return _deny_stream(d)
        return continuation(details)


class AioReflectionGate(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authorizer) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith("/grpc.reflection."):
            try:
                self.auth.identify(details.invocation_metadata)
            except Denied as d:
                return _deny_stream_aio(d)
        return await continuation(details)
