"""Issue 12's end-to-end check at full size: ``visionsearch-ingest`` on 5,000 photos into a running server,
killed with SIGKILL half-way, then rerun.

A server in a child process (``--backbone``, default mobilenet_v2 so that the run takes minutes, not a
quarter of an hour) gets a collection of that backbone's features. ``--photos`` Fashion-MNIST test images
are written as PNG files, one folder per class. The job (``python -m ingest FOLDER --collection demo
--create``) is started, killed with SIGKILL once the collection holds half of them, and started again with
the same command. Then:
- the collection holds exactly the photos' ids, each once (Count equals the number of distinct ids got back);
- the rerun skipped what the killed job had written and wrote the rest;
- for ``--check`` photos spread over the set, the stored vector equals the server's Embed of the same file
  (unit-normalised, float tolerance).

Results: ``bench/results/ingest_demo.json``.

    .venv/bin/python bench/ingest_demo.py
    .venv/bin/python bench/ingest_demo.py --photos 400 --check 20     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import ROOT, BenchServer  # bench/ is on sys.path when a bench script runs
from PIL import Image
from visionsearch_client import Client

from embedder.datasets import FASHION_CLASSES, fashion_mnist

RESULTS = Path(__file__).resolve().parent / "results"


def write_photos(folder: Path, n: int) -> list[str]:
    images, labels = fashion_mnist("test")
    ids = []
    for i in range(n):
        rel = f"{FASHION_CLASSES[labels[i]].replace('/', '-')}/{i:05d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(folder / rel)
        ids.append(rel)
    return ids


def job(folder: Path, address: str, embedder: str, report: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "ingest", str(folder), "--collection", "demo", "--create",
            "--server", address, "--embedder", embedder, "--report", str(report)]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=5000)
    ap.add_argument("--check", type=int, default=200, help="photos whose vector is compared with Embed")
    ap.add_argument("--backbone", default="mobilenet_v2")
    args = ap.parse_args()
    print(banner(), flush=True)
    out: dict[str, object] = {"photos": args.photos, "backbone": args.backbone}
    with tempfile.TemporaryDirectory(prefix="vs-ingest-demo-") as tmp:
        folder, t = Path(tmp) / "photos", Path(tmp)
        ids = write_photos(folder, args.photos)
        with BenchServer("--backbone", args.backbone) as server, Client(server.address, timeout=120) as c:
            t0 = time.monotonic()
            first = job(folder, server.address, args.backbone, t / "first.json", t / "first.log")
            count = 0
            while count < args.photos // 2:
                if first.poll() is not None:
                    raise SystemExit(
                        f"the job ended before it was killed:\n{(t / 'first.log').read_text()[-3000:]}"
                    )
                time.sleep(0.2)
                try:
                    count = c.count("demo")
                except Exception:  # the job has not created the collection yet
                    count = 0
            first.send_signal(signal.SIGKILL)
            first.wait()
            at_kill = c.count("demo")
            print(f"killed the job (SIGKILL) after {time.monotonic() - t0:.0f} s with {at_kill:,} written")
            second = job(folder, server.address, args.backbone, t / "second.json", t / "second.log")
            rc = second.wait()
            if not (t / "second.json").exists():
                raise SystemExit(f"the rerun failed (exit {rc}):\n{(t / 'second.log').read_text()[-3000:]}")
            summary = json.loads((t / "second.json").read_text())
            print((t / "second.log").read_text().strip().splitlines()[-3:])
            total = c.count("demo")
            got = {i.id for s in range(0, len(ids), 1000) for i in c.get_items("demo", ids[s : s + 1000])}
            step = max(1, len(ids) // args.check)
            worst = 0.0
            for rel in ids[::step][: args.check]:
                embedded = np.asarray(c.embed_image((folder / rel).read_bytes()), dtype=np.float64)
                (stored,) = c.get_items("demo", [rel], with_vector=True)
                worst = max(
                    worst,
                    float(np.abs(np.asarray(stored.vector) - embedded / np.linalg.norm(embedded)).max()),
                )
        ok = (
            rc == 0 and total == len(ids) == len(got) and got == set(ids)
            and summary["skipped"] == at_kill and summary["written"] == len(ids) - at_kill
            and not summary["failures"] and worst < 1e-4
        )  # fmt: skip
        out |= {
            "killed_at": at_kill, "rerun_skipped": summary["skipped"], "rerun_written": summary["written"],
            "rerun_images_per_s": summary["images_per_s"], "count": total, "distinct_ids": len(got),
            "all_ids_present": got == set(ids), "checked_vectors": len(ids[::step][: args.check]),
            "max_abs_diff_vs_embed": worst, "ok": ok,
        }  # fmt: skip
    print(
        f"{args.photos:,} photos: killed at {at_kill:,}; the rerun skipped {summary['skipped']:,} and wrote "
        f"{summary['written']:,}; the collection holds {total:,} items, {len(got):,} distinct ids, "
        f"all present: "
        f"{got == set(ids)}; {out['checked_vectors']} vectors vs Embed: max |diff| {worst:.2e} -> "
        f"{'OK' if ok else 'FAILED'}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest_demo.json").write_text(json.dumps(out, indent=2) + "\n")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
