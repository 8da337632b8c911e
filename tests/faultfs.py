"""A real filesystem that fails on command: a FUSE passthrough over a backing folder, whose operations
return the errno a test asks for (EIO, ENOSPC, ...) on the files it names.

The server's own system calls (write, fsync, rename, ...) then really fail, through the kernel, as they
would on a failing disk; no function of the server is replaced. Device-mapper (dm-flakey, dm-error) is not
available on these machines, which is why a FUSE filesystem plays the failing disk.

Usage::

    with FaultFS(tmp_path) as fs:           # mounted at fs.mount, backed by fs.backing
        fs.fail("write", "wal-*.log", errno.ENOSPC, times=1)
        ...
        fs.clear()

Run as a script, it is the filesystem process: ``python faultfs.py BACKING MOUNT RULES``.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def available() -> str:
    """Empty when FUSE can be used here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    if shutil.which("fusermount") is None:
        return "fusermount is missing (Debian package fuse; scripts/setup_test.sh installs it)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy cannot load libfuse ({e})"
    return ""


class FaultFS:
    def __init__(self, root: Path) -> None:
        self.backing = root / "backing"
        self.mount = root / "mnt"
        self.rules = root / "faultfs-rules.json"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FaultFS:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.clear()
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE), str(self.backing), str(self.mount), str(self.rules)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mount):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"faultfs did not mount: {err[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["fusermount", "-u", "-z", str(self.mount)], check=False, capture_output=True)
        if self._proc is not None:
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:  # files still open through the lazy unmount
                self._proc.kill()
                self._proc.wait()

    def fail(self, op: str, pattern: str, err: int, *, times: int = -1) -> None:
        """Make ``op`` (write, fsync, create, rename, truncate, mkdir, unlink, open) fail with ``err`` on
        paths whose file name matches ``pattern``, ``times`` times (-1: until cleared)."""
        rules = json.loads(self.rules.read_text())
        rules.append({"op": op, "pattern": pattern, "errno": err, "times": times, "hits": 0})
        self._write(rules)

    def clear(self) -> None:
        self._write([])

    def hits(self) -> int:
        """How many operations the rules have failed so far."""
        return sum(r.get("hits", 0) for r in json.loads(self.rules.read_text()))

    def _write(self, rules: list[dict[str, Any]]) -> None:
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(json.dumps(rules))
        os.replace(tmp, self.rules)


# ---------------------------------------------------------------------------- the filesystem process


def _serve(backing: str, mount: str, rules_path: str) -> None:
    import mfusepy as fuse

    lock = threading.Lock()

    def check(op: str, path: str) -> None:
        with lock:
            try:
                rules = json.loads(Path(rules_path).read_text())
            except (OSError, ValueError):
                return
            for rule in rules:
                if rule["op"] == op and fnmatch.fnmatch(os.path.basename(path), rule["pattern"]):
                    if rule["times"] == 0:
                        continue
                    rule["times"] -= 1 if rule["times"] > 0 else 0
                    rule["hits"] = rule.get("hits", 0) + 1
                    tmp = rules_path + ".tmp"
                    Path(tmp).write_text(json.dumps(rules))
                    os.replace(tmp, rules_path)
                    raise fuse.FuseOSError(rule["errno"])

    class Passthrough(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def _p(self, path: str) -> str:
            return backing + path

        def access(self, path: str, mode: int) -> None:
            if not os.access(self._p(path), mode):
                raise fuse.FuseOSError(errno.EACCES)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.lstat(self._p(path))
            keys = (
                "st_atime_ns",
                "st_ctime_ns",
                "st_mtime_ns",
                "st_gid",
                "st_mode",
                "st_nlink",
                "st_size",
                "st_uid",
            )
            out = {k.replace("_ns", ""): getattr(st, k) for k in keys}
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._p(path))]

        def mkdir(self, path: str, mode: int) -> None:
            check("mkdir", path)
            os.mkdir(self._p(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._p(path))

        def unlink(self, path: str) -> None:
            check("unlink", path)
            os.unlink(self._p(path))

        def rename(self, old: str, new: str) -> None:
            check("rename", new)
            os.rename(self._p(old), self._p(new))

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._p(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(self._p(path), uid, gid)

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
            os.utime(self._p(path), ns=times)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            check("truncate", path)
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._p(path), length)

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._p(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag")
            return {k: getattr(st, k) for k in (*keys, "f_frsize", "f_namemax")}

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            check("create", path)
            return os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

        def open(self, path: str, flags: int) -> int:
            check("open", path)
            return os.open(self._p(path), flags & ~os.O_APPEND)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            check("write", path)
            return os.pwrite(fh, data, offset)

        def flush(self, path: str, fh: int) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            check("fsync", path)
            os.fsync(fh)

        def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
            check("fsync", path)

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

    fuse.FUSE(Passthrough(), mount, foreground=True, nothreads=True, direct_io=True)


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
