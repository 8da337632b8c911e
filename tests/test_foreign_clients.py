"""The TypeScript and C++ clients against a live server, and buf's lint and breaking-change checks on protos/.

The toolchains come from ``scripts/setup_clients.sh`` (Debian's protoc, grpc_cpp_plugin and gRPC C++
headers; npm ci of clients/typescript). A missing toolchain fails these tests, naming that script. Both
clients generate their stubs from protos/ when built (never committed), and the tests build them first
(incrementally), so they always exercise the current proto.

The clients run as subprocesses against the session's in-process server on port 0 (the one with the
``default`` collection, and a 3,000-item shop collection the Python client writes for the query-contract
tests), reached through ``VISIONSEARCH_ADDRESS``, and against two in-process servers with
TLS and API keys (one also requiring client certificates), with certificates made for the module by
tests/pki.py and keys by ``add_key``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch_client import Client, Item, VisionSearchError
from visionsearch_client.filters import between, match, where

from server.app import Running, create_server
from server.auth import add_key
from server.config import Config
from server.services import Services
from tests.conftest import LION, ROOT
from tests.pki import Pair, client_certificates
from tests.test_query_contract import SHOP, SHOP_FILTER, _product, _unit

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


# test/security.test.js needs the servers with TLS and keys: test_typescript_over_tls_with_keys runs it.
TS_SECURE_SUITE = "security.test.js"


def test_typescript_client_calls_every_rpc(typescript_built: Path, client_env: dict[str, str]) -> None:
    """node --test: every RPC of the four services, and two refusals checked by their status codes
    (test/client.test.ts); typed payloads, filters, searchBatch, scroll, recommend, setPayload and
    updateCollection with a field mask, and the server's refusals of bad filters (test/query.test.ts)."""
    tests = sorted(
        str(p.relative_to(TS))
        for p in (typescript_built / "test").glob("*.test.js")
        if p.name != TS_SECURE_SUITE
    )
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
    assert lines[0].startswith("embedding: 1280-d from efficientnet_lite1"), explain(r)
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


# ---------------------------------------------------------------- TLS and API keys

PETS = "pets"
PHOTOS = {
    "lion": LION,
    "apple": Path("/usr/share/tuxpaint/stamps/food/fruit/apple_red.png"),
    "wrench": Path("/usr/share/tuxpaint/stamps/household/tools/wrench_adjustable.png"),
}


def clean_env() -> dict[str, str]:
    """The environment without VISIONSEARCH_* variables: what a test passes is what is tested."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VISIONSEARCH_")}


@dataclass(frozen=True)
class Secure:
    """Two servers with TLS and API keys; ``mtls`` also requires a client certificate from ``ca``."""

    tls: str
    mtls: str
    ca: Pair
    client: Pair
    keys: dict[str, str]  # role -> key; each key is named after its role
    description: Path  # the JSON file test/security.test.ts reads (VISIONSEARCH_SECURE_SERVERS)
    config: Config


@pytest.fixture(scope="module")
def secure(
    base_config: Config, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secure]:
    folder = tmp_path_factory.mktemp("secure-clients")
    pki = client_certificates(folder)
    ca, server, client = pki["ca"], pki["server"], pki["client"]
    key_file = folder / "keys.json"
    keys = {role: add_key(key_file, role, role) for role in ("read", "admin")}
    started: list[Running] = []

    def start(name: str, client_ca: str = "") -> str:
        config = replace(
            base_config,
            data_dir=folder / name,
            default_collection=False,
            tls_cert=str(server.cert),
            tls_key=str(server.key),
            tls_client_ca=client_ca,
            api_keys=str(key_file),
        )
        started.append(create_server(config, services.with_store(config)))
        return f"127.0.0.1:{started[-1].port}"

    try:
        tls_address = start("tls")
        mtls_address = start("mtls", client_ca=str(ca.cert))
        with Client(tls_address, api_key=keys["admin"], root_certificates=ca.cert, timeout=60) as admin:
            admin.create_collection(PETS, embedder="mobilenet_v2", joint="conse:spacy")
            items = [
                Item(name, image=path.read_bytes(), payload={"label": name}) for name, path in PHOTOS.items()
            ]
            admin.upsert(PETS, items)
        # What clients/typescript/test/server.ts reads: the certificates by their names in `pki`.
        description = folder / "servers.json"
        description.write_text(
            json.dumps({"tls": tls_address, "mtls": mtls_address, "pki": str(folder), "keys": keys})
        )
        yield Secure(tls_address, mtls_address, ca, client, keys, description, started[0].services.config)
    finally:
        for running in started:
            running.stop(grace=0)


def test_typescript_over_tls_with_keys(typescript_built: Path, secure: Secure) -> None:
    """node --test test/security.test.ts: a search with a key over TLS; no key -> UNAUTHENTICATED and a read
    key on admin RPCs -> PERMISSION_DENIED, each with the server's message; mTLS with and without a client
    certificate; plaintext and unverifiable certificates -> UNAVAILABLE; GetServerInfo's limits."""
    env = {**clean_env(), "VISIONSEARCH_SECURE_SERVERS": str(secure.description)}
    r = run(["node", "--test", f"dist/test/{TS_SECURE_SUITE}"], cwd=TS, env=env, timeout=300)
    assert r.returncode == 0, explain(r)
    assert "# fail 0" in r.stdout and "# pass 0" not in r.stdout, explain(r)


def test_typescript_example_over_tls_with_a_key(typescript_built: Path, secure: Secure) -> None:
    """The example takes the CA and the key from VISIONSEARCH_CA and VISIONSEARCH_API_KEY."""
    example = typescript_built / "examples" / "search_and_tag.js"
    env = {**clean_env(), "VISIONSEARCH_ADDRESS": secure.tls, "VISIONSEARCH_CA": str(secure.ca.cert)}
    keyed = {**env, "VISIONSEARCH_API_KEY": secure.keys["read"]}
    r = run(["node", str(example), str(LION), PETS], cwd=TS, env=keyed, timeout=120)
    assert r.returncode == 0, explain(r)
    similar = [line.split("\t") for line in r.stdout.splitlines() if line.startswith("similar: ")]
    assert similar[0][0] == "similar: lion" and float(similar[0][1]) > 0.99, explain(r)
    r = run(["node", str(example), str(LION), PETS], cwd=TS, env=env, timeout=120)
    assert r.returncode == 1, explain(r)
    assert "refused: Unauthenticated (16): this server needs an API key" in r.stderr, explain(r)


def cpp(cli: Path, secure: Secure, *args: str, key: str | None = "read", ca: bool = True) -> Result:
    """visionsearch-cli against the TLS server (--address in ``args`` overrides), with the CA and a key."""
    flags = ["--address", secure.tls]
    if ca:
        flags += ["--ca", str(secure.ca.cert)]
    if key is not None:
        flags += ["--api-key", secure.keys[key]]
    return run([str(cli), *flags, *args], cwd=ROOT, env=clean_env(), timeout=60)


def test_cpp_searches_over_tls_with_a_key(cli: Path, secure: Secure) -> None:
    r = cpp(cli, secure, "search", PETS, "cat", "-k", "3")
    assert r.returncode == 0, explain(r)
    assert [line.split("\t")[0] for line in r.stdout.splitlines()][:1] == ["lion"], explain(r)
    assert len(r.stdout.splitlines()) == 3, explain(r)

    # The same from the environment: VISIONSEARCH_ADDRESS, VISIONSEARCH_CA and VISIONSEARCH_API_KEY.
    env = {
        **clean_env(),
        "VISIONSEARCH_ADDRESS": secure.tls,
        "VISIONSEARCH_CA": str(secure.ca.cert),
        "VISIONSEARCH_API_KEY": secure.keys["read"],
    }
    r = run([str(cli), "tag", str(LION), "-k", "1", "--vocabulary", "car,cat,spoon"], cwd=ROOT, env=env,
            timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("cat\t"), explain(r)


def test_cpp_without_a_key_is_unauthenticated(cli: Path, secure: Secure) -> None:
    r = cpp(cli, secure, "search", PETS, "cat", key=None)
    assert r.returncode == 1 and r.stdout == "", explain(r)
    assert r.stderr.startswith(
        "error: UNAUTHENTICATED (16): this server needs an API key: send `authorization: Bearer <key>`"
    ), explain(r)
    r = cpp(cli, secure, "--api-key", "vs_not-a-key", "collections", key=None)
    assert r.returncode == 1 and r.stderr == "error: UNAUTHENTICATED (16): unknown API key\n", explain(r)


def test_cpp_read_key_on_an_admin_rpc_is_permission_denied(cli: Path, secure: Secure) -> None:
    r = cpp(cli, secure, "drop", PETS)
    assert r.returncode == 1 and r.stdout == "", explain(r)
    assert (
        r.stderr
        == "error: PERMISSION_DENIED (7): key 'read' has role read; DropCollection needs role admin\n"
    ), explain(r)
    r = cpp(cli, secure, "collections")  # still there, whole
    assert r.returncode == 0, explain(r)
    assert [line.split("\t")[:3] for line in r.stdout.splitlines()] == [[PETS, "3", "1280"]], explain(r)

    with Client(secure.tls, api_key=secure.keys["admin"], root_certificates=secure.ca.cert) as admin:
        admin.create_collection("scratch", dim=2)
    r = cpp(cli, secure, "drop", "scratch", key="admin")
    assert r.returncode == 0 and r.stdout == "dropped scratch\n", explain(r)
    r = cpp(cli, secure, "collections")
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == [PETS], explain(r)


def test_cpp_info_reports_the_limits_in_force(cli: Path, secure: Secure) -> None:
    r = cpp(cli, secure, "info")
    assert r.returncode == 0, explain(r)
    info = json.loads(r.stdout)
    assert info["tls"] is True and info["api_keys_required"] is True, explain(r)
    assert info["client_certificates_required"] is False, explain(r)
    limits = info["limits"]
    assert limits["max_k"] == secure.config.max_k, explain(r)
    assert int(limits["max_message_bytes"]) == secure.config.max_message_bytes, explain(r)  # int64: a string
    assert int(limits["max_pixels"]) == secure.config.max_pixels, explain(r)
    assert {"name": "mobilenet_v2", "dim": 1280, "input_size": 224} in info["embedders"], explain(r)


def test_cpp_mtls_needs_a_client_certificate(cli: Path, secure: Secure) -> None:
    mine = ["--cert", str(secure.client.cert), "--key", str(secure.client.key)]
    r = cpp(cli, secure, "--address", secure.mtls, *mine, "info")
    assert r.returncode == 0, explain(r)
    assert json.loads(r.stdout)["client_certificates_required"] is True, explain(r)

    r = cpp(cli, secure, "--address", secure.mtls, "info")
    assert r.returncode == 1 and r.stdout == "", explain(r)
    assert "error: UNAVAILABLE (14): " in r.stderr, explain(r)
    assert "pass --cert and --key signed by its CA" in r.stderr, explain(r)


def test_cpp_connection_failures_are_unavailable_with_a_hint(cli: Path, secure: Secure) -> None:
    r = cpp(cli, secure, "collections", ca=False)  # plaintext against the TLS port
    assert r.returncode == 1, explain(r)
    assert (
        "error: UNAVAILABLE (14): " in r.stderr and "hint: if the server speaks TLS, pass --ca" in r.stderr
    ), explain(r)
    r = cpp(cli, secure, "--tls", "collections", ca=False)  # gRPC's default roots do not hold the test CA
    assert r.returncode == 1, explain(r)
    assert "error: UNAVAILABLE (14): " in r.stderr and "handshake failed" in r.stderr.lower(), explain(r)


def test_cpp_refuses_unusable_tls_settings(cli: Path, secure: Secure, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("these bytes are no certificate")
    cases = {
        (
            "--cert",
            str(secure.client.cert),
            "info",
        ): "--cert and --key (a client certificate for mTLS) go together",
        ("--ca", str(tmp_path / "missing.pem"), "info"): f"cannot read {tmp_path / 'missing.pem'}",
        ("--ca", str(not_pem), "info"): f"{not_pem} is not a PEM file",
        ("--api-key", "", "info"): "the API key is empty",
        ("--api-key", "vs_a b", "info"): "characters a header cannot carry",
    }
    for args, message in cases.items():
        r = cpp(cli, secure, *args, key=None)
        assert r.returncode == 2 and message in r.stderr and "usage:" in r.stderr, explain(r)


# ---------------------------------------------------------------- filters, batches, scroll, payloads

# The shop query in the C++ CLI's filter syntax (clients/cpp/README.md, "JSON forms"): SHOP_FILTER's twin.
SHOP_JSON = json.dumps(
    {
        "must": [
            {"key": "category", "match": "shirt"},
            {"key": "price", "range": {"lt": 30}},
            {"key": "in_stock", "match": True},
            {"key": "sizes", "match": "M"},
        ]
    }
)
SHOP_ITEMS = 3000


@dataclass(frozen=True)
class Shop:
    name: str
    vectors: np.ndarray
    products: dict[str, dict[str, object]]  # id -> payload


@pytest.fixture(scope="module")
def shop(client: Client) -> Iterator[Shop]:
    """3,000 products (tests/test_query_contract.py's payloads) in the session server, written by Python."""
    name = f"shop_{os.getpid()}"
    client.create_collection(name, dim=16, payload_indexes=SHOP)
    vectors = _unit(SHOP_ITEMS, 16, 7)
    rng = random.Random(8)
    products = {f"p{n}": _product(n, rng) for n in range(SHOP_ITEMS)}
    items = [Item(i, vector=vectors[n], payload=p) for n, (i, p) in enumerate(products.items())]  # type: ignore[arg-type]
    for start in range(0, SHOP_ITEMS, 1000):
        client.upsert(name, items[start : start + 1000])
    yield Shop(name, vectors, products)
    client.drop_collection(name)


def cli_run(cli: Path, address: str, *args: str, stdin: str | None = None) -> Result:
    return subprocess.run(
        [str(cli), "--address", address, *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def hit_lines(r: Result) -> list[list[str]]:
    return [line.split("\t") for line in r.stdout.splitlines()]


def test_the_shop_query_from_typescript_and_cpp_equals_python(
    shop: Shop, client: Client, typescript_built: Path, cli: Path, address: str, client_env: dict[str, str]
) -> None:
    """'Similar shirts, in stock, under 30, size M' in one call: the same hits, payloads and count from the
    TypeScript example, the C++ CLI and the Python client."""
    want = client.search(shop.name, id="p0", k=10, filter=SHOP_FILTER)
    assert len(want) == 10
    passing = client.count(shop.name, filter=SHOP_FILTER)

    example = typescript_built / "examples" / "shop.js"
    r = run(["node", str(example), shop.name, "p0", "10"], cwd=TS, env=client_env, timeout=120)
    assert r.returncode == 0, explain(r)
    *hits, last = hit_lines(r)
    assert [h[0] for h in hits] == [h.id for h in want], explain(r)
    assert [json.loads(h[2]) for h in hits] == [h.payload for h in want], explain(r)
    assert last == [f"passing: {passing}"], explain(r)
    assert "pass the filter" in r.stderr, explain(r)  # the plan's note

    query = ["--id", "p0", "-k", "10", "--filter", SHOP_JSON, "--show-payload"]
    r = cli_run(cli, address, "search", shop.name, *query)
    assert r.returncode == 0, explain(r)
    got = hit_lines(r)
    assert [(h[0], h[1]) for h in got] == [(h.id, f"{h.score:.4f}") for h in want], explain(r)
    assert [json.loads(h[3]) for h in got] == [h.payload for h in want], explain(r)
    r = cli_run(cli, address, "count", shop.name, "--filter", SHOP_JSON)
    assert r.returncode == 0 and r.stdout == f"{passing}\n", explain(r)


def test_cpp_scroll_prints_every_item_once(shop: Shop, client: Client, cli: Path, address: str) -> None:
    """3,000 items, 250 a page: every id once, in order, with its payload as it went in."""
    r = cli_run(cli, address, "scroll", shop.name, "--limit", "250")
    assert r.returncode == 0, explain(r)
    lines = hit_lines(r)
    ids = [line[0] for line in lines]
    assert ids == sorted(shop.products), "ids missing, repeated or out of order"
    assert {i: json.loads(p) for i, p in lines} == shop.products

    cheap = where(must=[between("stock", lte=4)], must_not=[match("category", "hat")])
    cheap_json = json.dumps(
        {"must": [{"key": "stock", "range": {"lte": 4}}], "must_not": [{"key": "category", "match": "hat"}]}
    )
    r = cli_run(cli, address, "scroll", shop.name, "--filter", cheap_json, "--limit", "7")
    assert r.returncode == 0, explain(r)
    assert [line[0] for line in hit_lines(r)] == [i.id for i in client.scroll(shop.name, filter=cheap)]
    r = cli_run(cli, address, "count", shop.name, "--filter", cheap_json)
    assert r.stdout == f"{client.count(shop.name, filter=cheap)}\n", explain(r)


def test_cpp_batch_equals_single_searches(shop: Shop, client: Client, cli: Path, address: str) -> None:
    searches = [{"vector": [float(x) for x in shop.vectors[n]], "k": 5} for n in range(8)]
    searches.append({"id": "p3", "k": 4, "filter": json.loads(SHOP_JSON), "with_payload": False})
    searches.append({"vector": [float(x) for x in shop.vectors[9]], "k": 50, "score_threshold": 0.6})
    r = cli_run(cli, address, "batch", shop.name, "-", stdin="\n".join(map(json.dumps, searches)) + "\n")
    assert r.returncode == 0, explain(r)
    got: dict[int, list[tuple[str, str]]] = {}
    for search, hit_id, score, _label in hit_lines(r):
        got.setdefault(int(search), []).append((hit_id, score))
    singles = [client.search(shop.name, vector=shop.vectors[n], k=5) for n in range(8)]
    singles.append(client.search(shop.name, id="p3", k=4, filter=SHOP_FILTER))
    singles.append(client.search(shop.name, vector=shop.vectors[9], k=50, score_threshold=0.6))
    assert 0 < len(singles[9]) < 50  # the threshold cut the list
    for n, single in enumerate(singles):
        assert got.get(n, []) == [(h.id, f"{h.score:.4f}") for h in single], f"search {n}\n{explain(r)}"


def test_cpp_typed_payloads_and_set_payload_change_what_a_filter_finds(
    client: Client, cli: Path, address: str, tmp_path: Path
) -> None:
    name = f"cpp_payloads_{os.getpid()}"
    indexes = "category=keyword,price=float,in_stock=bool,sizes=keyword,stock=integer"
    r = cli_run(cli, address, "create", name, "--dim", "3", "--payload-index", indexes)
    assert r.returncode == 0, explain(r)
    info = r.stdout.rstrip("\n").split("\t")  # name, count, dim, index in use, payload indexes
    assert info[:3] == [name, "0", "3"] and info[4] == indexes, explain(r)
    try:
        items = tmp_path / "items.jsonl"
        a = {"category": "shirt", "price": 24.9, "in_stock": True, "sizes": ["S", "M"], "stock": 3,
             "title": "lion tee", "counts": [1, 2]}  # fmt: skip
        b = {"category": "hat", "price": 12.0, "stock": 0}  # 12.0 is sent as a double, 30 as an integer
        c = {"category": "hat", "price": 30, "in_stock": True}
        lines = [
            json.dumps({"id": "a", "vector": [1, 0, 0], "payload": a}),
            "",  # blank lines are skipped
            json.dumps({"id": "b", "vector": [0.9, 0.1, 0], "payload": b}),
            json.dumps({"id": "c", "vector": [0.8, 0.2, 0], "payload": c}),
        ]
        items.write_text("\n".join(lines) + "\n")
        r = cli_run(cli, address, "upsert", name, str(items))
        assert r.returncode == 0 and r.stdout == "upserted 3; count 3\n", explain(r)
        got = {i.id: i.payload for i in client.get_items(name, ["a", "b", "c"])}
        assert got["a"] == a
        assert isinstance(got["b"]["price"], float) and isinstance(got["c"]["price"], int)  # 12.0 and 30
        assert isinstance(got["a"]["stock"], int) and got["a"]["in_stock"] is True

        shirts = '{"must": [{"key": "category", "match": "shirt"}, {"key": "in_stock", "match": true}]}'
        assert cli_run(cli, address, "count", name, "--filter", shirts).stdout == "1\n"
        r = cli_run(cli, address, "set-payload", name, "b", "c", "nope", "--payload",
                    '{"category": "shirt", "in_stock": true, "sizes": ["M"]}')  # fmt: skip
        assert r.returncode == 0 and r.stdout == "updated 2\n", explain(r)
        assert cli_run(cli, address, "count", name, "--filter", shirts).stdout == "3\n"
        r = cli_run(cli, address, "search", name, "--vector", "1,0,0", "--filter", shirts, "-k", "5")
        assert [h[0] for h in hit_lines(r)] == ["a", "b", "c"], explain(r)
        assert client.get_items(name, ["b"])[0].payload == {
            "category": "shirt", "price": 12.0, "stock": 0, "in_stock": True, "sizes": ["M"]
        }  # fmt: skip

        r = cli_run(cli, address, "delete-payload-keys", name, "c", "--keys", "in_stock")
        assert r.returncode == 0 and r.stdout == "updated 1\n", explain(r)
        r = cli_run(cli, address, "scroll", name, "--filter", '{"must_not": [{"exists": "in_stock"}]}')
        assert hit_lines(r) == [["c", '{"category":"shirt","price":30,"sizes":["M"]}']], explain(r)

        r = cli_run(cli, address, "recommend", name, "--positive", "a", "--negative", "c", "-k", "1")
        assert r.returncode == 0 and [h[0] for h in hit_lines(r)] == ["b"], explain(r)
        r = cli_run(cli, address, "update", name, "--recall-target", "0.9")
        assert r.returncode == 0 and "stock=integer" in r.stdout, explain(r)  # the indexes stay
        assert client.get_collection(name).recall_target == pytest.approx(0.9)

        r = cli_run(cli, address, "delete", name, "--filter", '{"must": [{"key": "stock", "match": 0}]}')
        assert r.returncode == 0 and r.stdout == "deleted 1\n", explain(r)
        assert sorted(i.id for i in client.scroll(name)) == ["a", "c"]
    finally:
        client.drop_collection(name)


def test_cpp_bad_filters(shop: Shop, client: Client, cli: Path, address: str) -> None:
    """The server's refusal (exit 1) word for word; JSON the CLI cannot map (exit 2), named where it is."""
    colour = where(must=[match("colour", "red")])
    with pytest.raises(VisionSearchError) as refusal:
        client.count(shop.name, filter=colour)
    assert refusal.value.code == grpc.StatusCode.INVALID_ARGUMENT
    expected = f"error: INVALID_ARGUMENT (3): {refusal.value.details}\n"
    assert "payload key 'colour' is not indexed" in expected
    colour_json = '{"must": [{"key": "colour", "match": "red"}]}'
    for args in (
        ("count", shop.name),
        ("search", shop.name, "--id", "p0"),
        ("scroll", shop.name),
        ("delete", shop.name),
    ):
        r = cli_run(cli, address, *args, "--filter", colour_json)
        assert r.returncode == 1 and r.stdout == "" and r.stderr == expected, explain(r)
    assert client.count(shop.name) == SHOP_ITEMS

    cases = {
        '{"must": [{"key": "price", "range": {"lt": 3}}': "--filter: not valid JSON: parse error at line 1, "
        "column 47: syntax error while parsing array - unexpected end of input; expected ']'",
        '{"must": [{"key": "price", "rnage": {"lt": 3}}]}': '--filter: must[0]: unknown key "rnage"',
        '{"must": [{"key": "price", "match": 2.5}]}': "--filter: must[0].match: match takes a string",
        '{"must": [{"key": "price", "range": {"lt": "3"}}]}': "--filter: must[0].range.lt: expected a number",
        '{"mustt": []}': '--filter: unknown key "mustt" (allowed: must, must_not, should)',
        '[{"key": "a", "match": 1}]': "--filter: a filter is a JSON object of must, should and must_not",
    }
    for bad, message in cases.items():
        r = cli_run(cli, address, "count", shop.name, "--filter", bad)
        assert r.returncode == 2 and r.stdout == "" and f"visionsearch-cli: {message}" in r.stderr, explain(r)
    r = cli_run(cli, address, "count", shop.name, "--limit", "3")
    assert r.returncode == 2 and "count does not take --limit" in r.stderr, explain(r)
    assert "usage:" in r.stderr, explain(r)
    floats = '{"id": "x", "vector": [1], "payload": {"a": [1.5]}}\n'
    r = cli_run(cli, address, "upsert", shop.name, "-", stdin=floats)
    assert r.returncode == 2, explain(r)
    assert "stdin:1: payload.a: a list holds only strings or only whole numbers" in r.stderr, explain(r)


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
