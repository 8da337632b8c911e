"""``visionsearch-admin``: verify and repair a data folder offline, while no server uses it; manage API keys.

    visionsearch-admin check DATA_DIR [--collection NAME]     exit 0 when everything is sound, 1 otherwise
    visionsearch-admin repair DATA_DIR --collection NAME      rebuild a damaged collection from what is intact
    visionsearch-admin keys add FILE --name N --role read|write|admin [--collections a,b]
    visionsearch-admin keys list FILE | keys remove FILE --name N

``check`` reads every collection as the server would at start (without changing a byte) and also verifies the
fallback generation, so that damage is found before it is needed. ``repair`` keeps everything intact: the
newest snapshot whose files verify (or, if none does, the rows of the newest one that lie in undamaged 1 MiB
blocks) plus every intact log record after it, skipping damaged stretches. It writes them as a new
generation and moves the files it replaced into ``quarantine/<time>/`` inside the collection's folder; it
prints what could not be saved (rows, record numbers), since those writes are lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from server import auth
from server.storage import snapshot, wal
from server.storage.collection import Collection, CollectionSettings
from server.storage.recovery import CollectionDamaged, Recovered, config_bytes, read_config, recover
from server.storage.snapshot import Manifest, SnapshotDamaged, SnapshotData


@dataclasses.dataclass
class Report:
    name: str
    status: str  # "ok" | "repairable on open" | "damaged"
    details: list[str]


def check_collection(folder: Path) -> Report:
    try:
        r = recover(folder, folder.name, dry_run=True)
    except CollectionDamaged as e:
        return Report(folder.name, "damaged", [e.reason])
    details = list(r.notes)
    # The generation before the one in force is what would replace it: check it now, not when it is needed.
    for g, kinds in sorted(snapshot.generations(folder).items()):
        if 0 < g < r.manifest.generation and "manifest" in kinds:
            try:
                m = snapshot.read_manifest(folder, g)
                snapshot.verify(folder, m)
            except SnapshotDamaged as e:
                details.append(f"fallback {e}")
    for name, entry in r.manifest.files.items():
        if name.startswith(("hnsw-", "ann-")):
            problem = snapshot.verify_file(folder, name, entry)
            if problem:
                details.append(f"{problem} (the index is rebuilt from the vectors at open)")
    return Report(folder.name, "repairable on open" if details else "ok", details)


def _salvage_snapshot(folder: Path, m: Manifest, dim: int, joint_dim: int) -> tuple[SnapshotData, list[str]]:
    """The rows of a damaged snapshot whose bytes lie in blocks that pass their checksums."""
    g = m.generation
    items_name = f"items-{g}.msgpack"
    if items_name not in m.files or snapshot.verify_file(folder, items_name, m.files[items_name]):
        raise SnapshotDamaged(folder, g, f"{items_name} is damaged: no row can be named")
    with open(folder / items_name, "rb") as f:
        items = msgpack.unpackb(f.read(), raw=False)
    ids, payloads = items["ids"], items["payloads"]
    keep = np.ones(len(ids), bool)
    arrays: dict[str, np.ndarray] = {}
    for stem, width in (("vectors", dim), ("joint", joint_dim)):
        if not width:
            continue
        name = f"{stem}-{g}.npy"
        entry = m.files.get(name)
        if entry is None or not (folder / name).exists():
            raise SnapshotDamaged(folder, g, f"{name} is missing")
        with open(folder / name, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read(f)
            offset = f.tell()
        if shape != (len(ids), width):
            raise SnapshotDamaged(folder, g, f"{name} has shape {shape}, not ({len(ids)}, {width})")
        raw = np.fromfile(folder / name, dtype="<f4", offset=offset)
        if raw.size != len(ids) * width:
            raw = np.resize(raw, len(ids) * width)
            keep[:] = False
        bad = snapshot.bad_blocks(folder, name, entry)
        row_bytes = width * 4
        for b in bad:
            lo, hi = b * snapshot.BLOCK - offset, (b + 1) * snapshot.BLOCK - offset
            first, last = max(0, lo // row_bytes), min(len(ids), -(-hi // row_bytes))
            keep[first:last] = False
        arrays[stem] = raw.reshape(len(ids), width)
    lost = [ids[i] for i in np.flatnonzero(~keep)]
    rows = np.flatnonzero(keep)
    data = SnapshotData(
        [ids[i] for i in rows],
        [payloads[i] for i in rows],
        np.ascontiguousarray(arrays["vectors"][rows]),
        np.ascontiguousarray(arrays["joint"][rows]) if "joint" in arrays else None,
    )
    notes = [f"snapshot {g}: {len(lost)} rows lay in damaged blocks and are lost"] if lost else []
    if lost:
        notes.append("lost ids: " + ", ".join(lost[:20]) + (" ..." if len(lost) > 20 else ""))
    return data, notes


def repair_collection(folder: Path) -> list[str]:
    """Rebuild ``folder`` from its intact parts as a new generation; returns what was done and lost."""
    actions: list[str] = []
    settings_raw, problem = read_config(folder)
    gens = snapshot.generations(folder)
    manifests: list[Manifest] = []
    for g in sorted(gens, reverse=True):
        if "manifest" in gens[g]:
            try:
                manifests.append(snapshot.read_manifest(folder, g))
            except SnapshotDamaged as e:
                actions.append(str(e))
    if settings_raw is None:
        settings_raw = next((m.settings for m in manifests if m.settings), None)
        if settings_raw is None:
            raise SystemExit(f"{folder.name}: {problem} and no manifest holds the settings: cannot repair")
        actions.append(f"{problem}: settings taken from a manifest")
    settings = CollectionSettings.from_dict(settings_raw)
    dim, joint_dim = settings.dim, settings.joint_dim

    # Every intact log record, whichever generation's log holds it (damaged stretches skipped).
    by_seq: dict[int, dict[str, Any]] = {}
    for g in sorted(g for g, kinds in gens.items() if "wal" in kinds):
        path = snapshot.wal_path(folder, g)
        try:
            by_seq.update(dict(wal.replay(path).records))
        except wal.WalCorrupt as e:
            salvaged, skipped = wal.salvage(path)
            actions.append(f"{e}: kept {len(salvaged)} intact records; skipped {'; '.join(skipped)}")
            by_seq.update(dict(salvaged))
    target = max([m.last_seq for m in manifests] + list(by_seq), default=0)

    def gap(m: Manifest) -> list[int]:
        return [s for s in range(m.last_seq + 1, target + 1) if s not in by_seq]

    # The base: the newest snapshot that verifies whole and whose later records are all intact; failing
    # that, the rows of the newest snapshot in undamaged blocks; failing that, the sound snapshot that
    # loses the fewest records.
    sound: list[tuple[Manifest, SnapshotData]] = []
    for m in manifests:
        try:
            sound.append((m, snapshot.load(folder, m, dim, joint_dim)))
        except SnapshotDamaged as e:
            actions.append(f"{e}: not used")
    base = next((b for b in sound if not gap(b[0])), None)
    if base is None and manifests and (not sound or sound[0][0] is not manifests[0]):
        try:
            data, notes = _salvage_snapshot(folder, manifests[0], dim, joint_dim)
            base = (manifests[0], data)
            actions += notes
        except SnapshotDamaged as e:
            actions.append(f"{e}: its rows are lost")
    if base is None and sound:
        base = min(sound, key=lambda b: len(gap(b[0])))
    if base is None:
        empty = SnapshotData([], [], np.zeros((0, dim), np.float32), np.zeros((0, joint_dim), np.float32))
        base = (Manifest(0, 0, 0, settings_raw), empty)
        if manifests:
            actions.append("no snapshot could be used: rebuilding from the logs alone")
    manifest, data = base
    missing = gap(manifest)
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        actions.append(f"{len(missing)} log records are missing ({shown}): their writes are lost")
    records = [(s, by_seq[s]) for s in sorted(by_seq) if s > manifest.last_seq]

    stamp = time.strftime("%Y%m%dT%H%M%S")
    quarantine = folder / "quarantine" / stamp
    quarantine.mkdir(parents=True, exist_ok=True)
    top = max(gens, default=0)
    for p in list(folder.iterdir()):
        if p.is_file() and p.name != "config.json":
            shutil.move(str(p), quarantine / p.name)
    snapshot.write_atomic(folder / "config.json", config_bytes(dataclasses.asdict(settings)))
    recovered = Recovered(
        settings_raw, Manifest(0, 0, 0, settings_raw), data, records, top, None,
        (records[-1][0] + 1) if records else manifest.last_seq + 1, needs_snapshot=True,
    )  # fmt: skip
    c = Collection(folder, settings, recovered, fsync=True, snapshot_wal_bytes=1 << 62)
    count = len(c)
    c.close()
    actions.append(f"wrote a new generation with {count} items; the old files are in {quarantine}")
    return actions


def _folders(data_dir: Path, name: str | None) -> list[Path]:
    root = data_dir / "collections"
    if not root.is_dir():
        raise SystemExit(f"{data_dir} holds no collections folder: is it a visionsearch data folder?")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if name is not None:
        folders = [p for p in folders if p.name == name]
        if not folders:
            raise SystemExit(f"no collection {name!r} in {root}")
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visionsearch-admin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("check", "repair"):
        p = sub.add_parser(cmd)
        p.add_argument("data_dir", type=Path)
        p.add_argument("--collection", required=cmd == "repair")
    keys = sub.add_parser("keys", help="API keys: add (prints the new key once), list, remove")
    keys.add_argument("action", choices=["add", "list", "remove"])
    keys.add_argument("file", type=Path, help="the key file the server reads (--api-keys)")
    keys.add_argument("--name", help="who the key is for; logs name the key by it")
    keys.add_argument("--role", choices=auth.ROLES, default="read")
    keys.add_argument("--collections", default="", help="comma-separated: the only collections it may use")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    if args.command == "check":
        bad = 0
        for folder in _folders(args.data_dir, args.collection):
            report = check_collection(folder)
            print(f"{report.name}: {report.status}")
            for d in report.details:
                print(f"  - {d}")
            bad += report.status != "ok"
        return 1 if bad else 0
    for folder in _folders(args.data_dir, args.collection):
        for action in repair_collection(folder):
            print(f"{folder.name}: {action}")
        report = check_collection(folder)
        print(f"{folder.name}: now {report.status}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    try:
        if args.action == "list":
            for k in auth.read_keys(args.file):
                print(f"{k.name}\t{k.role}\t{','.join(k.collections) or '*'}")
            return 0
        if not args.name:
            raise auth.KeyFileError(f"keys {args.action} needs --name")
        if args.action == "remove":
            kept = [k for k in auth.read_keys(args.file) if k.name != args.name]
            auth.write_keys(args.file, kept)
            print(f"removed {args.name!r}; the server drops it within a second (or at once on SIGHUP)")
            return 0
        collections = [c for c in args.collections.split(",") if c]
        secret = auth.add_key(args.file, args.name, args.role, collections)
    except auth.KeyFileError as e:
        print(f"visionsearch-admin: {e}", file=sys.stderr)
        return 2
    print(secret)
    scope = f", collections {','.join(collections)}" if collections else ""
    print(
        f"added {args.name!r} ({args.role}{scope}); the key above is shown once and stored nowhere "
        "(the file holds its hash)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
