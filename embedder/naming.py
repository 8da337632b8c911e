"""Names of joint spaces (no torch here: the storage layer validates them too)."""

from __future__ import annotations

import re

# A head is named, never pathed: "head:NAME" is DATA_DIR/heads/NAME.safetensors and nothing else, so that a
# request cannot load a file from elsewhere, nor cache one head under many spellings.
HEAD_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def unknown_joint(name: str, known: dict[str, int]) -> str:
    """What to say of a joint space name that is not offered."""
    shown = repr(name) if len(name) <= 100 else f"{name[:100]!r}... ({len(name):,} characters)"
    kind, _, arg = name.partition(":")
    if kind in ("head", "head+conse") and not HEAD_NAME.fullmatch(arg):
        return (
            f"joint space {shown}: head names are 1-64 characters of [A-Za-z0-9_-], naming "
            "DATA_DIR/heads/NAME.safetensors (never a path)"
        )
    return f"joint space {shown} is unknown; use one of {sorted(known)} or leave it empty"
