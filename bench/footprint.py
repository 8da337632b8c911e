"""How much memory serving the default collection takes, and where it goes.

Starts ``python -m server`` on a data folder holding the default collection (built on the first run, a few
minutes), waits until it serves, warms it with one call of each kind (an image search, a word search, a tag,
an embed), then reads ``/proc/PID/smaps`` of the server and of every process under it (the embedding
workers): PSS (shared pages counted once in all), RSS, and the PSS of the largest mappings, grouped (the
Python heap, torch's libraries, other libraries, anonymous memory, files mapped). Target: <= 1.5 GB PSS in
all. Results: ``bench/results/footprint.json``.

    .venv/bin/python bench/footprint.py [--data-dir data] [-- server flags...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _machine import banner  # bench/ is on sys.path when a bench script runs
from filtered import cpu  # bench/ is on sys.path when a bench script runs
from visionsearch_client import Client

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "footprint.json"
LION = Path("/usr/share/tuxpaint/stamps/animals/mammals/cats/lion.png")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        path = task / "children"
        if path.exists():
            out += [int(c) for c in path.read_text().split()]
    return out + [g for c in out for g in children(c)]


def smaps(pid: int) -> dict[str, Any]:
    groups: dict[str, float] = defaultdict(float)
    pss = rss = 0.0
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if head:
            name = head.group(1).strip()
            continue
        if line.startswith("Pss:"):
            kb = int(line.split()[1])
            pss += kb
            if "torch" in name:
                key = "torch libraries"
            elif name.endswith(".so") or ".so." in name:
                key = "other libraries"
            elif name == "[heap]":
                key = "heap"
            elif not name or name.startswith("["):
                key = "anonymous"
            else:
                key = "mapped files"
            groups[key] += kb
        elif line.startswith("Rss:"):
            rss += int(line.split()[1])
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    return {
        "pid": pid, "cmd": cmd, "pss_mb": pss / 1024, "rss_mb": rss / 1024,
        "by_kind_mb": {k: round(v / 1024, 1) for k, v in sorted(groups.items(), key=lambda x: -x[1])},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("flags", nargs="*", help="more server flags (after --)")
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", "127.0.0.1:0", "--data-dir", str(args.data_dir),
         "--log-level", "WARNING", *args.flags],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r}")
        with Client(m.group(1), timeout=300) as c:
            image = LION.read_bytes()
            c.search("default", image=image, k=5)
            c.search("default", words=["cat"], k=5)
            c.tag(image, k=5)
            c.embed_image(image)
            time.sleep(2)
        procs = [smaps(p) for p in [proc.pid, *children(proc.pid)]]
    finally:
        proc.terminate()
        proc.wait(60)
    total = sum(p["pss_mb"] for p in procs)
    for p in procs:
        print(f"{p['pid']:>7} PSS {p['pss_mb']:7.0f} MB  RSS {p['rss_mb']:7.0f} MB  {p['cmd'][:70]}")
        print("        " + ", ".join(f"{k} {v:.0f}" for k, v in p["by_kind_mb"].items()))
    print(f"total PSS {total:.0f} MB over {len(procs)} processes (target <= 1,536 MB) on {cpu()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": cpu(), "total_pss_mb": total, "processes": procs}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
