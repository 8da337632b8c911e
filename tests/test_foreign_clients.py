"""The TypeScript and C++ clients against a live server, and buf's lint and breaking-change checks on protos/.

The toolchains come from ``scripts/setup_clients.sh`` (Debian's protoc, grpc_cpp_plugin and gRPC C++
headers; npm ci of clients/typescript). A missing toolchain fails these tests, naming that script. Both
clients generate their stubs from protos/ when built (never committed), and the tests build them first
(incrementally), so they always exercise the current proto.

The clients run as subprocesses against the session's in-process server on port 0 (the one with the
``default`` collection), reached through ``VISIONSEARCH_ADDRESS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app import Running
from tests.conftest import LION, ROOT

TS = ROOT / "clients" / "typescript"
CPP_BUILD = ROOT / "clients" / "cpp" / "build"
SETUP = "run scripts/setup_clients.sh (or `make clients`) first"


Result = subprocess.CompletedProcess[str]


def run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Result:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def explain(r: Result) -> str:
    """The command, its exit status and its output, for an assertion message."""
    command = " ".join(map(str, r.args))
    return f"$ {command}\nexit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {SETUP}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def address(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def client_env(address: str) -> dict[str, str]:
    return {**os.environ, "VISIONSEARCH_ADDRESS": address}


@pytest.fixture(scope="module")
def buf() -> str:
    path = TS / "node_modules" / ".bin" / "buf"
    if not path.exists():
        pytest.fail(f"buf is not installed in {TS / 'node_modules'}: {SETUP}", pytrace=False)
    return str(path)


@pytest.fixture(scope="module")
def typescript_built(buf: str) -> Path:
    """clients/typescript built (buf generate + tsc) from the current protos/."""
    need_tool("node")
    npm = need_tool("npm")
    r = run([npm, "run", "--silent", "build"], cwd=TS, timeout=300)
    assert r.returncode == 0, explain(r)
    return TS / "dist"


@pytest.fixture(scope="module")
def cli() -> Path:
    """visionsearch-cli, rebuilt incrementally (protoc reruns when the proto changed)."""
    cmake = need_tool("cmake")
    for tool in ("protoc", "grpc_cpp_plugin"):
        need_tool(tool)
    if not (CPP_BUILD / "CMakeCache.txt").exists():
        pytest.fail(f"the C++ client is not configured ({CPP_BUILD}): {SETUP}", pytrace=False)
    r = run([cmake, "--build", str(CPP_BUILD), "-j2"], cwd=ROOT, timeout=600)
    assert r.returncode == 0, explain(r)
    return CPP_BUILD / "visionsearch-cli"


# ---------------------------------------------------------------- TypeScript


def test_typescript_client_calls_every_rpc(typescript_built: Path, client_env: dict[str, str]) -> None:
    """node --test: every RPC of the four services, and two refusals checked by their status codes."""
    tests = sorted(str(p.relative_to(TS)) for p in (typescript_built / "test").glob("*.test.js"))
    assert tests, f"no compiled TypeScript tests in {typescript_built / 'test'}"
    r = run(["node", "--test", *tests], cwd=TS, env=client_env, timeout=600)
    assert r.returncode == 0, explain(r)
    assert "# fail 0" in r.stdout and "# pass 0" not in r.stdout, explain(r)


def test_typescript_example_searches_and_tags(typescript_built: Path, client_env: dict[str, str]) -> None:
    """The example embeds an image file, finds similar photos in the default collection and tags it."""
    example = typescript_built / "examples" / "search_and_tag.js"
    r = run(["node", str(example), str(LION)], cwd=TS, env=client_env, timeout=120)
    assert r.returncode == 0, explain(r)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("embedding: 1280-d from mobilenet"), explain(r)
    similar = [line.removeprefix("similar: ").split("\t") for line in lines if line.startswith("similar: ")]
    assert len(similar) == 5, explain(r)
    _, score, label = similar[0]  # the lion photo itself is stored in the default collection
    assert label == "lion" and float(score) > 0.99, explain(r)
    assert lines[-1].startswith("tags: "), explain(r)


def test_typescript_example_reports_a_refusal(typescript_built: Path, client_env: dict[str, str]) -> None:
    example = typescript_built / "examples" / "search_and_tag.js"
    r = run(["node", str(example), str(LION), "no_such_collection"], cwd=TS, env=client_env, timeout=120)
    assert r.returncode == 1, explain(r)
    assert "refused: NotFound (5)" in r.stderr and "no_such_collection" in r.stderr, explain(r)


# ---------------------------------------------------------------- C++


def test_cpp_searches_by_word(cli: Path, address: str) -> None:
    r = run([str(cli), "--address", address, "search", "default", "cat", "-k", "5"], cwd=ROOT, timeout=120)
    assert r.returncode == 0, explain(r)
    hits = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(hits) == 5, explain(r)
    ids = [h[0] for h in hits]
    assert all(i.startswith("tuxpaint/animals/") for i in ids), explain(r)
    scores = [float(h[1]) for h in hits]
    assert scores == sorted(scores, reverse=True), explain(r)


def test_cpp_tags_an_image_file(cli: Path, client_env: dict[str, str]) -> None:
    # The address comes from VISIONSEARCH_ADDRESS here.
    r = run([str(cli), "tag", str(LION), "-k", "3", "--vocabulary", "car,cat,spoon"], cwd=ROOT, timeout=120,
            env=client_env)  # fmt: skip
    assert r.returncode == 0, explain(r)
    words = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert words[0] == "cat" and sorted(words) == ["car", "cat", "spoon"], explain(r)


def test_cpp_reports_the_status_of_refused_calls(cli: Path, address: str, tmp_path: Path) -> None:
    r = run([str(cli), "--address", address, "search", "no_such_collection", "cat"], cwd=ROOT, timeout=60)
    assert r.returncode == 1 and r.stdout == "", explain(r)
    assert r.stderr.startswith("error: NOT_FOUND (5): ") and "no_such_collection" in r.stderr, explain(r)

    not_an_image = tmp_path / "not_an_image.png"
    not_an_image.write_bytes(b"these bytes are no image")
    r = run([str(cli), "--address", address, "tag", str(not_an_image)], cwd=ROOT, timeout=60)
    assert r.returncode == 1, explain(r)
    assert r.stderr.startswith("error: INVALID_ARGUMENT (3): "), explain(r)

    r = run([str(cli), "--address", address, "frobnicate"], cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "usage:" in r.stderr, explain(r)


# ---------------------------------------------------------------- buf


def test_buf_lint_passes(buf: str) -> None:
    """STANDARD rules; the exceptions in buf.yaml say why each is kept."""
    r = run([buf, "lint"], cwd=ROOT, timeout=120)
    assert r.returncode == 0, explain(r)


def proto_history() -> Iterator[str]:
    """Commits that changed protos/, newest first: versions the current proto must stay compatible with."""
    r = run(["git", "log", "--format=%H", "--", "protos/"], cwd=ROOT, timeout=60)
    assert r.returncode == 0, explain(r)
    yield from r.stdout.split()


def test_buf_breaking_against_every_earlier_version(buf: str) -> None:
    """The working tree's protos/ against every version of protos/ that main has held.

    Checking every earlier version (not only HEAD~1) catches a breaking change made in any commit of a
    submission. A deliberate break belongs in a new package (visionsearch.v2) beside v1.
    """
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git history here (an export without .git): nothing to compare protos/ against")
    versions = list(proto_history())
    for commit in versions:
        r = run([buf, "breaking", "--against", f".git#ref={commit},subdir=protos"], cwd=ROOT, timeout=120)
        assert r.returncode == 0, f"protos/ breaks compatibility with {commit}:\n{explain(r)}"
    shallow = run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, timeout=30).stdout.strip()
    if len(versions) < 2 and shallow == "true":
        pytest.skip(
            f"shallow clone: protos/ was checked against {versions or 'no commit'} only; clone the full "
            "history (CI does) to check it against every earlier version"
        )
