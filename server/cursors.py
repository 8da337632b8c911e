"""Scroll cursors: an item id with the collection's identity, signed so that a caller cannot forge one.

A cursor is ``base64url(json) . base64url(hmac-sha256)``, keyed by a secret kept in the data folder (created
at first start, readable by the server's user only), so cursors survive a restart. The collection's ``uid``
(set at creation) tells a cursor of a collection that was dropped and created again from a fresh one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from server.errors import Error, fail

FIX = "start again with an empty cursor"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cursors:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "cursor-secret"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            os.replace(tmp, path)
        self._key = path.read_bytes()

    def _sign(self, body: bytes) -> str:
        return _b64(hmac.new(self._key, body, hashlib.sha256).digest())

    def make(self, collection: str, uid: str, after: str) -> str:
        body = json.dumps({"c": collection, "u": uid, "a": after}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{self._sign(body)}"

    def read(self, cursor: str, collection: str, uid: str) -> str:
        """The id a cursor continues after; INVALID_ARGUMENT for a forged, foreign or stale cursor."""
        if len(cursor) > 2048:
            fail(
                Error.BAD_REQUEST,
                f"cursor has {len(cursor):,} characters: it is not one this server made; {FIX}",
            )
        body_text, _, signature = cursor.partition(".")
        try:
            body = _unb64(body_text)
            good = hmac.compare_digest(self._sign(body), signature)
            doc = json.loads(body) if good else None
        except (ValueError, UnicodeDecodeError):
            good, doc = False, None
        if not good or not isinstance(doc, dict):
            fail(
                Error.BAD_REQUEST, f"cursor is not one this server made (its signature does not match); {FIX}"
            )
        if doc.get("c") != collection:
            fail(
                Error.BAD_REQUEST,
                f"cursor belongs to collection {str(doc.get('c'))[:64]!r}, not {collection!r}",
            )
        if doc.get("u") != uid:
            fail(
                Error.BAD_REQUEST,
                f"cursor is from before collection {collection!r} was dropped and created again: {FIX}",
            )
        return str(doc["a"])
