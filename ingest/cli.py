"""``visionsearch-ingest``: embed a folder, a glob or a CSV/Parquet list of photos on Ray Data and write the
vectors to a visionsearch collection, Parquet files or Milvus.

    visionsearch-ingest photos/ --server 127.0.0.1:50051 --collection shirts --create --actors 2
    visionsearch-ingest 'photos/**/*.jpg' --parquet out/ --joint conse:spacy --embedder mobilenet_v2@96
    visionsearch-ingest list.csv --milvus ./milvus.db --milvus-collection shirts --joint conse:minilm

Rerunning the same command resumes: ids already in the output are skipped (see ``ingest.sinks``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from visionsearch_client import VisionSearchError

from embedder.backbones import backbone_of
from embedder.image import INPUT_SIZES, embedder_names, input_size
from embedder.joint import JointSpace
from ingest.pipeline import FORWARD_BATCH, cluster_cpus, embedded_batches, start_ray
from ingest.sinks import CollectionSink, MilvusSink, ParquetSink, Sink, SinkError
from ingest.sources import SourceError, list_source
from server.config import Config

DUPLICATE = "duplicate id"
REFUSED = "refused by the output"
SHOWN_FAILURES = 20


@dataclass
class Failure:
    id: str
    kind: str
    reason: str


@dataclass
class Summary:
    output: str
    listed: int = 0  # photos found in the source (after dropping duplicate ids)
    skipped: int = 0  # already in the output: a rerun's resume
    written: int = 0
    ignored: int = 0  # files of a folder or glob not named like images
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0  # the whole job
    embed_seconds: float = 0.0  # from the pipeline's start to its last batch written
    actors: int = 0
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.written / self.embed_seconds if self.embed_seconds else 0.0

    def failure_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.failures))

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"images_per_s": self.images_per_s, "failure_counts": self.failure_counts()}

    def text(self) -> str:
        verb = "interrupted after writing" if self.interrupted else "wrote"
        lines = [
            f"{verb} {self.written:,} photos to {self.output} in {self.embed_seconds:.1f} s: "
            f"{self.images_per_s:.1f} images/s with {self.actors} actor(s) ({self.seconds:.1f} s in all)",
            f"  listed {self.listed:,}; already present (skipped) {self.skipped:,}; "
            f"failed {len(self.failures):,}"
            + (f"; ignored {self.ignored:,} files not named like images" if self.ignored else ""),
        ]
        for kind, n in sorted(self.failure_counts().items()):
            lines.append(f"  {kind}: {n:,}")
        for f in self.failures[:SHOWN_FAILURES]:
            lines.append(f"    {f.id[:100]}: {f.reason[:200]}")
        if len(self.failures) > SHOWN_FAILURES:
            lines.append(
                f"    ... and {len(self.failures) - SHOWN_FAILURES:,} more (--report FILE lists them all)"
            )
        if self.interrupted:
            lines.append("  rerun the same command to resume: photos already written are skipped")
        return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="visionsearch-ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("source", help="a folder (recursive), a glob ('**' recurses), or a .csv/.parquet list")
    ap.add_argument("--path-column", default="path", help="the list's column of image paths (default: path)")
    ap.add_argument(
        "--id-column", help="the list's column of item ids (default: the path as written in the list)"
    )
    out = ap.add_argument_group("output (exactly one)")
    out.add_argument("--collection", help="a visionsearch collection, on the server at --server")
    out.add_argument("--parquet", type=Path, help="a folder of Parquet part files")
    out.add_argument("--milvus", help="a Milvus URI (http://host:19530) or a Milvus Lite file (./milvus.db)")
    ap.add_argument("--server", default="127.0.0.1:50051", help="visionsearch server for --collection")
    ap.add_argument("--create", action="store_true", help="create the --collection if it does not exist")
    ap.add_argument("--milvus-collection", default="visionsearch", help="collection name for --milvus")
    ap.add_argument("--milvus-token", default="", help="Milvus credentials, 'user:password' or an API key")
    ap.add_argument(
        "--embedder",
        help="efficientnet_lite0/1/2, mobilenet_v2 (224 px) or mobilenet_v2@SIZE, SIZE in "
        f"{', '.join(map(str, INPUT_SIZES))}; a --collection's own embedder by default",
    )
    ap.add_argument(
        "--joint", help="also compute joint vectors (conse:spacy, conse:minilm, head:NAME) for Parquet/Milvus"
    )
    ap.add_argument(
        "--data-dir", type=Path, default=Config().data_dir, help="where heads/ and the text cache are"
    )
    ap.add_argument("--actors", type=int, help="embedding actors, one torch thread each (default: all CPUs)")
    ap.add_argument(
        "--address",
        help="join this Ray cluster, e.g. 10.0.0.5:6379 (default: start a local one); if it uses token "
        "authentication, set RAY_AUTH_MODE=token and give its token (~/.ray/auth_token or RAY_AUTH_TOKEN)",
    )
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all cores)")
    ap.add_argument(
        "--batch-size", type=int, default=16, help="images per Ray batch (a decode task, an actor call)"
    )
    ap.add_argument(
        "--forward-batch", type=int, default=FORWARD_BATCH, help="images per forward inside an actor"
    )
    ap.add_argument(
        "--write-batch",
        type=int,
        help="items per write (default: 128 per upsert, 2048 per Parquet part, 512 per Milvus upsert)",
    )
    ap.add_argument(
        "--max-pixels",
        type=int,
        default=Config().max_pixels,
        help="larger images are skipped (server's limit)",
    )
    ap.add_argument("--limit", type=int, help="ingest only the first N photos of the source")
    ap.add_argument("--report", type=Path, help="write the summary and every failure to this JSON file")
    return ap


def open_sink(args: argparse.Namespace, joint_dim: int) -> Sink:
    outputs = [o for o in (args.collection, args.parquet, args.milvus) if o]
    if len(outputs) != 1:
        raise SinkError("name exactly one output: --collection NAME, --parquet FOLDER or --milvus URI")
    if args.collection:
        return CollectionSink(
            args.server, args.collection, create=args.create, embedder=args.embedder, joint=args.joint
        )
    if args.parquet:
        return ParquetSink(args.parquet)
    return MilvusSink(args.milvus, args.milvus_collection, joint_dim=joint_dim, token=args.milvus_token)


def load_joint(name: str, data_dir: Path, embedder: str) -> JointSpace:
    """The joint space the server would use, built from the same registry, weights and word vectors."""
    from embedder.image import ImageEmbedder
    from embedder.joint import JointRegistry
    from embedder.words import WordVectors

    backbone = backbone_of(embedder).name
    images = ImageEmbedder(threads=1, max_pixels=1, backbone=backbone)
    try:
        registry = JointRegistry(
            images, WordVectors(), cache_dir=data_dir / "cache", threads=1, heads_dir=data_dir / "heads"
        )
        try:
            space = registry.get(name, backbone)
        except KeyError:
            raise SinkError(
                f"joint space {name!r} is unknown; use one of {sorted(registry.dims())}"
            ) from None
    finally:
        images.close()
    if space.input_size and space.input_size != input_size(embedder):
        raise SinkError(
            f"joint space {name!r} maps {space.input_size} px features but --embedder {embedder!r} embeds at "
            f"{input_size(embedder)} px: use --embedder mobilenet_v2@{space.input_size}"
        )
    return space


def run(args: argparse.Namespace) -> Summary:
    t0 = time.perf_counter()
    if args.address and args.num_cpus:
        raise SinkError("--num-cpus sizes a local Ray instance; a cluster joined with --address has its own")
    if args.embedder and args.embedder not in embedder_names():
        raise SinkError(f"--embedder {args.embedder!r} is unknown; use one of {sorted(embedder_names())}")
    listing = list_source(
        args.source, path_column=args.path_column, id_column=args.id_column, limit=args.limit
    )
    joint: JointSpace | None = None
    if args.joint and not args.collection:
        joint = load_joint(args.joint, args.data_dir, args.embedder or "mobilenet_v2")
    sink = open_sink(args, joint.dim if joint else 0)
    embedder = getattr(sink, "embedder", None) or args.embedder or "mobilenet_v2"
    summary = Summary(output=sink.description, listed=len(listing.photos), ignored=listing.ignored)
    first = {p.id: p.path for p in listing.photos}
    summary.failures += [
        Failure(d.id, DUPLICATE, f"{d.path[:100]} has the id of {first[d.id][:100]}")
        for d in listing.duplicates
    ]
    try:
        done = sink.existing([p.id for p in listing.photos])
        todo = [p for p in listing.photos if p.id not in done]
        summary.skipped = len(listing.photos) - len(todo)
        start_ray(args.address, args.num_cpus)
        cpus = cluster_cpus()
        summary.actors = args.actors or cpus
        if not 1 <= summary.actors <= cpus:
            raise SinkError(f"--actors {summary.actors} needs as many CPUs, and the Ray cluster has {cpus}")
        write_batch = args.write_batch or sink.default_write_batch
        t_embed = time.perf_counter()
        buffered: list[tuple[str, np.ndarray, dict[str, str]]] = []

        def flush() -> None:
            ids = [b[0] for b in buffered]
            vectors = np.stack([b[1] for b in buffered])
            refused = sink.write(
                ids, vectors, joint.project(vectors) if joint else None, [b[2] for b in buffered]
            )
            summary.failures += [Failure(i, REFUSED, reason) for i, reason in refused]
            summary.written += len(ids) - len(refused)
            buffered.clear()

        batches = embedded_batches(
            todo,
            size=input_size(embedder),
            max_pixels=args.max_pixels,
            actors=summary.actors,
            batch_size=args.batch_size,
            forward_batch=args.forward_batch,
            backbone=backbone_of(embedder).name,
        )
        bar = tqdm(total=len(todo), unit="img", desc="ingest", mininterval=1.0, file=sys.stderr)
        try:
            for batch in batches:
                for n, item_id in enumerate(batch["id"]):
                    if batch["kind"][n]:
                        summary.failures.append(Failure(str(item_id), batch["kind"][n], batch["error"][n]))
                    else:
                        buffered.append((str(item_id), batch["vector"][n], json.loads(batch["payload"][n])))
                if len(buffered) >= write_batch:
                    flush()
                bar.update(len(batch["id"]))
                bar.set_postfix(failed=len(summary.failures), refresh=False)
            if buffered:
                flush()
        except KeyboardInterrupt:
            # What was written stays written; the buffered batch is embedded again by the rerun.
            summary.interrupted = True
        finally:
            bar.close()
        summary.embed_seconds = time.perf_counter() - t_embed
    finally:
        sink.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = run(args)
    except (SourceError, SinkError) as e:
        print(f"visionsearch-ingest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "visionsearch-ingest: interrupted; what was written is kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except VisionSearchError as e:
        print(
            f"visionsearch-ingest: the server refused or did not answer ({e}); what was written is kept: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    print(summary.text())
    if args.report:
        args.report.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
