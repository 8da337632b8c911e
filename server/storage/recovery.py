"""What a collection folder holds, verified: its settings, the newest sound snapshot and the logs after it.

Opening never guesses silently. Each departure from the normal layout is either repaired from a redundant
copy and reported as a note (a damaged snapshot replaced by the previous generation and its log, a missing
``CURRENT`` or ``config.json`` restored from a manifest, a torn log tail cut), or it makes the collection
``CollectionDamaged`` with a reason that names the file, the offset and the fix. The server then serves the
other collections and reports this one as damaged.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.storage import snapshot, wal
from server.storage.snapshot import Manifest, SnapshotDamaged, SnapshotData

log = logging.getLogger("visionsearch.store")

REPAIR_HINT = "run `visionsearch-admin check DATA_DIR` for details and `visionsearch-admin repair` to fix"


class CollectionDamaged(Exception):
    """A collection that cannot be opened without losing data; ``reason`` says why and what to do."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"collection {name!r} is damaged: {reason}")


@dataclass
class Recovered:
    settings: dict[str, Any]
    manifest: Manifest  # the snapshot loaded
    data: SnapshotData
    records: list[tuple[int, dict[str, Any]]]  # log records after the snapshot, in order
    top: int  # the generation whose log stays open for appends
    end: int | None  # where appends continue in that log (None: create it)
    next_seq: int
    notes: list[str] = field(default_factory=list)
    needs_snapshot: bool = False  # fell back or read an earlier version's files: write a fresh generation
    damaged: list[int] = field(default_factory=list)  # snapshot generations found damaged and passed over


# ------------------------------------------------------------------ config.json


def config_bytes(settings: dict[str, Any]) -> bytes:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return json.dumps({"format": 2, "settings": settings, "crc32": zlib.crc32(canonical.encode())}).encode()


def read_config(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """The settings in ``config.json``, or None and what is wrong with it."""
    path = folder / "config.json"
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "config.json is missing"
    except (ValueError, UnicodeDecodeError):
        return None, "config.json is damaged (not JSON)"
    if not isinstance(doc, dict):
        return None, "config.json is damaged (not an object)"
    if "format" not in doc:
        return doc, ""  # an earlier version's plain settings
    settings = doc.get("settings")
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    if not isinstance(settings, dict) or zlib.crc32(canonical.encode()) != doc.get("crc32"):
        return None, "config.json is damaged (checksum mismatch)"
    return settings, ""


# ------------------------------------------------------------------ open


def recover(folder: Path, name: str, *, dry_run: bool = False) -> Recovered:
    """Read a collection folder. With ``dry_run`` nothing is written (an earlier version's log is not
    rewritten in the current format)."""
    notes: list[str] = []
    settings, config_problem = read_config(folder)
    gens = snapshot.generations(folder)
    current, current_problem = snapshot.read_current(folder)
    if current is not None and current != 0 and current not in gens:
        current, current_problem = None, f"CURRENT names generation {current}, which has no files"
    if current is None:
        snapshots = sorted((g for g, kinds in gens.items() if kinds & {"manifest", "vectors"}), reverse=True)
        if snapshots:
            notes.append(f"{current_problem}: using generation {snapshots[0]}, the newest with a snapshot")
            current = snapshots[0]
        else:
            current = min(gens, default=0)  # never snapshotted: generation 0's log
            if gens and current_problem != "CURRENT is missing":
                notes.append(f"{current_problem}: using the log of generation {current}")
    logs_top = max([g for g, kinds in gens.items() if "wal" in kinds] + [current])

    legacy = not any("manifest" in kinds for kinds in gens.values())
    fallback_failures: list[str] = []
    first_failure = ""
    damaged: list[int] = []
    tried = sorted({g for g in gens if g <= current} | {current}, reverse=True)
    for g in tried:
        if g == 0 and current != 0 and "wal" not in gens.get(0, set()):
            break  # generation 0 has no snapshot: without its log it holds nothing to fall back on
        try:
            manifest = snapshot.read_manifest(folder, g, legacy=legacy)
            if settings is None and not manifest.legacy and manifest.settings:
                settings = manifest.settings
                notes.append(f"{config_problem}: settings restored from manifest-{g}.json")
            if settings is None:
                if g == 0:
                    continue
                raise CollectionDamaged(
                    name, f"{config_problem} and no manifest holds the settings; {REPAIR_HINT}"
                )
            dim, joint_dim = int(settings["dim"]), int(settings.get("joint_dim", 0))
            data = snapshot.load(folder, manifest, dim, joint_dim)
        except SnapshotDamaged as e:
            first_failure = first_failure or str(e)
            damaged.append(g)
            log.warning("collection %s: %s; trying the generation before it", name, e)
            continue
        if manifest.count >= 0 and manifest.count != len(data.ids):
            first_failure = (
                first_failure or f"snapshot {g} holds {len(data.ids)} items, its manifest {manifest.count}"
            )
            continue
        try:
            records, end, next_seq, log_notes, upgraded = _replay_chain(
                folder, name, g, logs_top, manifest, dry_run
            )
        except CollectionDamaged as e:
            if g == current:
                raise  # the snapshot is sound, a log after it is not: no other generation helps
            fallback_failures.append(f"generation {g}: {e.reason.removesuffix('; ' + REPAIR_HINT)}")
            continue
        notes.extend(log_notes)
        if g != current:
            notes.append(f"{first_failure}: replaced by snapshot {g} and the logs after it")
        elif first_failure:
            notes.append(first_failure)
        if settings is None:
            raise CollectionDamaged(
                name, f"{config_problem} and no manifest holds the settings; {REPAIR_HINT}"
            )
        return Recovered(
            settings, manifest, data, records, logs_top, end, next_seq, notes,
            needs_snapshot=g != current or manifest.legacy or upgraded or bool(config_problem) or bool(notes),
            damaged=damaged,
        )  # fmt: skip
    if settings is None:
        raise CollectionDamaged(name, f"{config_problem} and no manifest holds the settings; {REPAIR_HINT}")
    raise CollectionDamaged(
        name,
        f"{first_failure or 'no snapshot found'}, and no earlier generation can replace it"
        + (f" ({'; '.join(fallback_failures)})" if fallback_failures else "")
        + f"; {REPAIR_HINT}",
    )


def _replay_chain(
    folder: Path, name: str, start: int, top: int, manifest: Manifest, dry_run: bool
) -> tuple[list[tuple[int, dict[str, Any]]], int | None, int, list[str], bool]:
    """Replay ``wal-start`` .. ``wal-top``, checking that their sequence numbers follow the snapshot's."""
    records: list[tuple[int, dict[str, Any]]] = []
    notes: list[str] = []
    expect = manifest.last_seq + 1
    end: int | None = None
    upgraded = False
    for g in range(start, top + 1):
        path = snapshot.wal_path(folder, g)
        if not path.exists():
            if g == top:
                end = None  # a crash between CURRENT and the new log, or a collection just created
                continue
            raise CollectionDamaged(
                name, f"{path.name} is missing: the changes it held are lost; {REPAIR_HINT}"
            )
        try:
            r = wal.replay(path, first_seq=expect)
        except wal.WalCorrupt as e:
            raise CollectionDamaged(name, f"{e}; nothing was truncated; {REPAIR_HINT}") from None
        if r.legacy:
            upgraded = True
        elif r.first_seq != expect and (r.records or g != top):
            raise CollectionDamaged(
                name,
                f"{path.name} starts at record {r.first_seq} but the records before it end at {expect - 1}: "
                f"a log is missing or belongs elsewhere; {REPAIR_HINT}",
            )
        if r.torn_bytes:
            notes.append(f"{path.name}: cut an interrupted append ({r.torn_bytes} bytes at byte {r.end:,})")
        records.extend(r.records)
        expect += len(r.records)
        if g == top:
            end = r.end if r.records and not r.legacy else None  # an empty log is recreated as new
            if r.legacy and r.records and not dry_run:
                _rewrite_legacy(path, r)
                end = path.stat().st_size
        elif r.torn_bytes:
            notes.append(f"{path.name} was cut short before generation {g + 1} began")
    return records, end, expect, notes, upgraded


def _rewrite_legacy(path: Path, r: wal.Replay) -> None:
    """Rewrite an earlier version's log in the current format, atomically, so appends can follow."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(wal.header(r.first_seq))
        for seq, record in r.records:
            f.write(wal.encode(seq, record))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    snapshot.fsync_dir(path.parent)
