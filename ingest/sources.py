"""What to ingest: a folder, a glob, or a CSV/Parquet list of paths with payload columns -> ``Photo`` rows.

Ids are derived from paths, deterministically, so a rerun of the same command names every photo the same way
and the sink can tell which are already written (see ``ingest.sinks``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

# The name endings of the formats the embedder decodes (embedder.image); a folder's other files (captions,
# sounds) are not photos and are only counted.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MAX_ID_BYTES = 256  # the server's limit on an item id (protos: Item.id)
_GLOB_CHARS = frozenset("*?[")


class SourceError(ValueError):
    """A source that cannot be listed: the message says what to pass instead."""


@dataclass(frozen=True)
class Photo:
    id: str
    path: str
    payload: dict[str, str] = field(default_factory=dict)


@dataclass
class Listing:
    photos: list[Photo]
    ignored: int = 0  # files of a folder or glob that are not named like images
    duplicates: list[Photo] = field(default_factory=list)  # a later row whose id an earlier row has


def make_id(name: str) -> str:
    """``name`` (a relative path) as an item id; one over the server's 256-byte limit keeps its start and gets
    a hash of the whole name, so it stays unique and deterministic."""
    if len(name.encode("utf8")) <= MAX_ID_BYTES:
        return name
    digest = hashlib.sha256(name.encode("utf8")).hexdigest()[:16]
    head = name.encode("utf8")[: MAX_ID_BYTES - 18].decode("utf8", errors="ignore")
    return f"{head}#{digest}"


def list_source(
    source: str, *, path_column: str = "path", id_column: str | None = None, limit: int | None = None
) -> Listing:
    """A folder (searched recursively), a glob (``**`` recurses) or a ``.csv``/``.parquet`` file of paths."""
    p = Path(source)
    suffix = p.suffix.lower()
    if p.is_file() and suffix in (".csv", ".parquet"):
        rows = _list_table(p, path_column, id_column)
    elif p.is_dir():
        rows, ignored = _list_files(sorted(f for f in p.rglob("*") if not f.is_dir()), p)
        return _dedupe(rows[:limit] if limit else rows, ignored)
    elif any(c in source for c in _GLOB_CHARS):
        root = _glob_root(source)
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if not os.path.isdir(f))
        rows, ignored = _list_files(files, root)
        return _dedupe(rows[:limit] if limit else rows, ignored)
    elif p.exists():
        raise SourceError(f"{source[:100]!r} is a file but not a .csv or .parquet list of paths")
    else:
        raise SourceError(
            f"{source[:100]!r} does not exist: pass a folder, a glob such as 'photos/**/*.jpg', or a "
            ".csv/.parquet file with a path column"
        )
    return _dedupe(rows[:limit] if limit else rows, 0)


def _list_files(files: list[Path], root: Path) -> tuple[list[Photo], int]:
    # Anything but a folder is listed, a broken link too: it is reported as unreadable, not silently lost.
    rows, ignored = [], 0
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            ignored += 1
            continue
        rows.append(Photo(make_id(f.relative_to(root).as_posix()), str(f), {"source": str(f)}))
    return rows, ignored


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: ids are paths relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(c in part for c in _GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _list_table(path: Path, path_column: str, id_column: str | None) -> list[Photo]:
    try:
        if path.suffix.lower() == ".csv":
            # Every column as text: payloads are strings, and "007" must stay "007".
            table = pa_csv.read_csv(
                path, convert_options=pa_csv.ConvertOptions(column_types=_all_strings(path))
            )
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{path} could not be read as {path.suffix[1:].upper()}: {str(e)[:100]}") from None
    columns = table.column_names
    if path_column not in columns:
        raise SourceError(
            f"{path} has no column {path_column!r} (columns: {columns[:20]}): pass --path-column"
        )
    if id_column is not None and id_column not in columns:
        raise SourceError(f"{path} has no column {id_column!r} (columns: {columns[:20]}): pass --id-column")
    base = path.parent
    rows = []
    for n, record in enumerate(table.to_pylist()):
        given = record[path_column]
        if given is None or str(given) == "":
            raise SourceError(f"{path}: row {n + 1} has an empty {path_column!r}")
        given = str(given)
        full = Path(given) if os.path.isabs(given) else base / given
        item_id = str(record[id_column]) if id_column else Path(given).as_posix()
        payload = {
            k: str(v) for k, v in record.items() if k not in (path_column, id_column) and v is not None
        }
        payload["source"] = str(full)
        rows.append(Photo(make_id(item_id), str(full), payload))
    return rows


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    header = pa_csv.open_csv(path).schema.names
    return dict.fromkeys(header, pa.string())


def _dedupe(rows: list[Photo], ignored: int) -> Listing:
    seen: set[str] = set()
    kept: list[Photo] = []
    dupes: list[Photo] = []
    for r in rows:
        (dupes if r.id in seen else kept).append(r)
        seen.add(r.id)
    return Listing(kept, ignored, dupes)
