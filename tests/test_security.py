"""Serving on a real network: TLS and mTLS handshakes over real connections on port 0, API keys with roles on
every RPC, key-file and certificate reloads under traffic, and binds that refuse to be exposed. Certificates
are made by the test session (tests/pki.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item, VisionSearchError

from server import auth
from server.app import Running, create_server
from server.auth import RPC_ROLES, KeyFileError, add_key
from server.config import Config
from server.handlers import all_methods, methods
from server.services import Services
from server.tls import TlsConfigError, UnsafeBind
from tests.conftest import ROOT
from tests.pki import Authority, Pair, self_signed

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
ROLE_KEY = {"read": "reader", "write": "writer", "admin": "admin"}
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder, "ca")
    other = Authority(folder, "other-ca")
    return {
        "ca": ca.pair,
        "server": ca.issue("server"),
        "server2": ca.issue("server2"),  # the rotation's new certificate
        "client": ca.issue("client", hosts=(), client=True),
        "other-client": other.issue("other-client", hosts=(), client=True),
        "expired": ca.issue("expired", expired=True),
        "wrong-host": ca.issue("wrong-host", hosts=("other.example",)),
        "self-signed": self_signed(folder, "self-signed"),
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    secrets = {
        "reader": add_key(path, "reader", "read"),
        "writer": add_key(path, "writer", "write"),
        "admin": add_key(path, "admin", "admin"),
        "limited": add_key(path, "limited", "write", ["allowed"]),
    }
    return path, secrets


@contextmanager
def serving(base_config: Config, services: Services, tmp_path: Path, **settings: object) -> Iterator[Running]:
    config = replace(base_config, data_dir=tmp_path / "data", default_collection=False, **settings)  # type: ignore[arg-type]
    own = services.with_store(config)
    running = create_server(config, own)
    try:
        yield running
    finally:
        running.stop(grace=0)


def target(running: Running) -> str:
    return f"127.0.0.1:{running.port}"


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except VisionSearchError as e:
        return e.code
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ TLS and mTLS


def test_tls_serves_and_plaintext_against_it_fails_cleanly(
    base_config: Config, services: Services, tmp_path: Path, pki: dict[str, Pair]
) -> None:
    tls = {"tls_cert": str(pki["server"].cert), "tls_key": str(pki["server"].key)}
    with serving(base_config, services, tmp_path, **tls) as running:
        with Client(target(running), root_certificates=pki["ca"].cert, timeout=10) as c:
            c.create_collection("t", dim=2)
            c.upsert("t", [Item("a", vector=[1, 0])])
            assert c.search("t", vector=[1, 0], k=1)[0].id == "a"
            info = c.server_info()
            assert info.tls and not info.client_certificates_required and not info.api_keys_required
        t0 = time.monotonic()
        with Client(target(running), timeout=10) as plain:
            assert status_of(lambda: plain.count("t")) == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 10  # refused at the handshake, not left to time out


@pytest.mark.parametrize("bad", ["expired", "wrong-host", "self-signed"])
def test_clients_refuse_bad_server_certificates(
    base_config: Config, services: Services, tmp_path: Path, pki: dict[str, Pair], bad: str
) -> None:
    tls = {"tls_cert": str(pki[bad].cert), "tls_key": str(pki[bad].key)}
    with (
        serving(base_config, services, tmp_path, **tls) as running,
        Client(target(running), root_certificates=pki["ca"].cert, timeout=10) as c,
        pytest.raises(VisionSearchError) as info,
    ):
        c.list_collections()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "the TLS handshake failed: check that the server's certificate is valid" in info.value.details


def test_mtls_refuses_clients_without_a_certificate_from_its_ca(
    base_config: Config, services: Services, tmp_path: Path, pki: dict[str, Pair]
) -> None:
    settings = {
        "tls_cert": str(pki["server"].cert),
        "tls_key": str(pki["server"].key),
        "tls_client_ca": str(pki["ca"].cert),
    }
    with serving(base_config, services, tmp_path, **settings) as running:
        ca = pki["ca"].cert
        with Client(target(running), root_certificates=ca, timeout=10) as none:
            assert status_of(none.list_collections) == grpc.StatusCode.UNAVAILABLE
        other = pki["other-client"]
        with Client(
            target(running),
            root_certificates=ca,
            private_key=other.key,
            certificate_chain=other.cert,
            timeout=10,
        ) as stranger:
            assert status_of(stranger.list_collections) == grpc.StatusCode.UNAVAILABLE
        mine = pki["client"]
        with Client(
            target(running),
            root_certificates=ca,
            private_key=mine.key,
            certificate_chain=mine.cert,
            timeout=10,
        ) as c:
            assert c.list_collections() == []
            assert c.server_info().client_certificates_required


def test_certificate_rotation_under_live_traffic_fails_no_call(
    base_config: Config, services: Services, tmp_path: Path, pki: dict[str, Pair]
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    with serving(base_config, services, tmp_path, tls_cert=str(cert), tls_key=str(key)) as running:
        with Client(target(running), root_certificates=pki["ca"].cert) as c:
            c.create_collection("r", dim=2)
            c.upsert("r", [Item("a", vector=[1, 0])])
        stop = threading.Event()
        failures: list[str] = []
        calls = [0]

        def traffic(fresh_channels: bool) -> None:
            c = Client(target(running), root_certificates=pki["ca"].cert, timeout=10)
            while not stop.is_set():
                if fresh_channels:  # new connections: new handshakes, during and after the swap
                    c.close()
                    c = Client(target(running), root_certificates=pki["ca"].cert, timeout=10)
                try:
                    assert c.search("r", vector=[1, 0], k=1)[0].id == "a"
                    calls[0] += 1
                except Exception as e:  # every failure is recorded, and fails the test
                    failures.append(repr(e))
            c.close()

        threads = [threading.Thread(target=traffic, args=(fresh,)) for fresh in (False, True, True)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        # Rotate as an operator would: the new key first, then the certificate (each replaced atomically).
        for src, dst in ((pki["server2"].key, key), (pki["server2"].cert, cert)):
            shutil.copy(src, dst.with_suffix(".new"))
            os.replace(dst.with_suffix(".new"), dst)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == [], failures[:5]
        assert calls[0] > 50
        assert running.certificates is not None and running.certificates.reloads >= 1


# ------------------------------------------------------------------ API keys


def test_every_rpc_has_a_role() -> None:
    # A new RPC without an entry here would be refused to every key but admin's: name its role first.
    assert set(all_methods()) == set(RPC_ROLES)
    assert set(RPC_ROLES.values()) <= set(auth.ROLES)


def test_every_role_against_every_rpc(
    base_config: Config, services: Services, tmp_path: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    path, secrets = keys
    rank = {r: n for n, r in enumerate(auth.ROLES)}
    with serving(base_config, services, tmp_path, api_keys=str(path)) as running:
        with grpc.insecure_channel(target(running)) as ch:
            for service in {m.split("/")[1] for m in all_methods()}:
                for name, req, resp in methods(service):
                    method = f"/{service}/{name}"
                    call = ch.unary_unary(method, req.SerializeToString, resp.FromString)
                    assert status_of(lambda call=call, req=req: call(req(), timeout=30)) == UNAUTH, method
                    for role in auth.ROLES:
                        md = (("authorization", f"Bearer {secrets[ROLE_KEY[role]]}"),)
                        got = status_of(
                            lambda call=call, req=req, md=md: call(req(), metadata=md, timeout=30)
                        )
                        if rank[role] < rank[RPC_ROLES[method]]:
                            assert got == DENIED, (method, role, got)
                        else:
                            assert got not in (DENIED, UNAUTH), (method, role, got)


def test_key_headers_and_their_refusals(
    base_config: Config, services: Services, tmp_path: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    path, secrets = keys
    with serving(base_config, services, tmp_path, api_keys=str(path)) as running:
        with grpc.insecure_channel(target(running)) as ch:
            count = ch.unary_unary(
                "/visionsearch.v1.CollectionService/ListCollections",
                pb.ListCollectionsRequest.SerializeToString,
                pb.ListCollectionsResponse.FromString,
            )
            good = secrets["reader"]
            ok = [("authorization", f"Bearer {good}"), ("api-key", good), ("authorization", f"bearer {good}")]
            for header in ok:
                count(pb.ListCollectionsRequest(), metadata=(header,), timeout=10)
            refusals = {
                "unknown API key": (("api-key", good[:-2] + "xx"),),
                "the API key is empty": (("api-key", ""),),
                "send one API key": (("api-key", good), ("authorization", f"Bearer {secrets['admin']}")),
                "keys have": (("api-key", "k" * 5_000),),
                "must be `Bearer <key>`": (("authorization", f"Basic {good}"),),
                "needs an API key": (),
            }
            for fragment, md in refusals.items():
                with pytest.raises(grpc.RpcError) as info:
                    count(pb.ListCollectionsRequest(), metadata=md, timeout=10)
                assert info.value.code() == UNAUTH and fragment in info.value.details(), (
                    fragment,
                    info.value,
                )
                assert len(info.value.details()) < 200
            # A megabyte of key is over grpc's own metadata limit: refused before it reaches us, cleanly.
            with pytest.raises(grpc.RpcError) as info:
                count(pb.ListCollectionsRequest(), metadata=(("api-key", "k" * 1_000_000),), timeout=10)
            assert info.value.code() in (UNAUTH, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
        with Client(target(running), api_key=good, timeout=10) as c:
            assert c.list_collections() == []  # and the server is fine


def test_health_is_open_and_reflection_needs_any_valid_key(
    base_config: Config, services: Services, tmp_path: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    path, secrets = keys
    with serving(base_config, services, tmp_path, api_keys=str(path)) as running:
        with grpc.insecure_channel(target(running)) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
            for version in ("v1alpha", "v1"):
                info = ch.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    rpb.ServerReflectionRequest.SerializeToString,
                    rpb.ServerReflectionResponse.FromString,
                )
                request = rpb.ServerReflectionRequest(list_services="")
                with pytest.raises(grpc.RpcError) as err:
                    list(info(iter([request]), timeout=10))
                assert err.value.code() == UNAUTH
                md = (("api-key", secrets["reader"]),)
                (answer,) = list(info(iter([request]), metadata=md, timeout=10))
                names = {s.name for s in answer.list_services_response.service}
                assert (
                    "visionsearch.v1.SearchService" in names
                    and "grpc.reflection.v1.ServerReflection" in names
                )


def test_a_limited_key_sees_and_touches_only_its_collections(
    base_config: Config, services: Services, tmp_path: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    path, secrets = keys
    with serving(base_config, services, tmp_path, api_keys=str(path)) as running:
        with Client(target(running), api_key=secrets["admin"]) as admin:
            for name in ("allowed", "other"):
                admin.create_collection(name, dim=2)
                admin.upsert(name, [Item("a", vector=[1, 0])])
        with Client(target(running), api_key=secrets["limited"]) as c:
            assert [i.name for i in c.list_collections()] == ["allowed"]
            c.upsert("allowed", [Item("b", vector=[0, 1])])
            for call in (lambda: c.count("other"), lambda: c.upsert("other", [Item("x", vector=[1, 0])])):
                with pytest.raises(VisionSearchError) as info:
                    call()
                assert info.value.code == DENIED
                assert "'limited' may use the collections allowed, not 'other'" in info.value.details
            with pytest.raises(VisionSearchError) as info:
                c.drop_collection("allowed")
            assert info.value.code == DENIED and "DropCollection needs role admin" in info.value.details


def test_the_key_file_reloads_without_a_restart(
    base_config: Config, services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    first = add_key(path, "first", "read")
    with serving(base_config, services, tmp_path, api_keys=str(path)) as running:

        def works(secret: str) -> grpc.StatusCode:
            with Client(target(running), api_key=secret, timeout=10) as c:
                return status_of(c.list_collections)

        def eventually(secret: str, code: grpc.StatusCode) -> None:
            deadline = time.monotonic() + 10
            while works(secret) != code:
                assert time.monotonic() < deadline, f"still not {code.name}"
                time.sleep(0.1)

        assert works(first) == grpc.StatusCode.OK
        second = add_key(path, "second", "read")
        eventually(second, grpc.StatusCode.OK)
        auth.write_keys(path, [k for k in auth.read_keys(path) if k.name != "first"])
        eventually(first, UNAUTH)
        path.write_text("{ not json")  # a broken edit: the keys in force stay
        assert running.auth is not None and not running.auth.reload()
        assert works(second) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("content", "mode", "fragment"),
    [
        ("{ nope", 0o600, "is not valid JSON"),
        (
            json.dumps({"format": 1, "keys": [{"name": "x", "role": "root", "sha256": "0" * 64}]}),
            0o600,
            "role 'root'",
        ),
        (json.dumps({"format": 1, "keys": []}), 0o644, "readable or writable by other users"),
        (json.dumps({"keys": []}), 0o600, '"format": 1'),
    ],
)
def test_bad_key_files_are_refused_at_start(
    base_config: Config, services: Services, tmp_path: Path, content: str, mode: int, fragment: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    path.chmod(mode)
    with (
        pytest.raises(KeyFileError, match=fragment),
        serving(base_config, services, tmp_path, api_keys=str(path)),
    ):
        pass


def test_exposed_binds_need_tls_and_keys_or_insecure(
    base_config: Config,
    services: Services,
    tmp_path: Path,
    pki: dict[str, Pair],
    keys: tuple[Path, dict[str, str]],
) -> None:
    with pytest.raises(UnsafeBind, match=r"without TLS \(--tls-cert, --tls-key\) and API keys"):
        with serving(base_config, services, tmp_path, address="0.0.0.0:0"):
            pass
    with serving(base_config, services, tmp_path, address="0.0.0.0:0", insecure=True) as running:
        with Client(target(running)) as c:
            assert c.healthy()
    tls = {"tls_cert": str(pki["server"].cert), "tls_key": str(pki["server"].key), "api_keys": str(keys[0])}
    with serving(base_config, services, tmp_path, address="0.0.0.0:0", **tls) as running:
        with Client(target(running), root_certificates=pki["ca"].cert, api_key=keys[1]["reader"]) as c:
            assert c.server_info().api_keys_required
    with (
        pytest.raises(TlsConfigError, match="do not load together"),
        serving(
            base_config, services, tmp_path, tls_cert=str(pki["server"].cert), tls_key=str(pki["client"].key)
        ),
    ):
        pass
    # From the command line: exit code 2 and the fix, before any model loads.
    out = subprocess.run(
        [sys.executable, "-m", "server", "--address", "0.0.0.0:0", "--data-dir", str(tmp_path / "cli")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        out.returncode == 2 and "refusing to listen on 0.0.0.0:0" in out.stderr and "--insecure" in out.stderr
    )


def test_logs_name_the_key_never_its_secret(
    base_config: Config,
    services: Services,
    tmp_path: Path,
    keys: tuple[Path, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, secrets = keys
    with (
        serving(base_config, services, tmp_path, api_keys=str(path)) as running,
        caplog.at_level(logging.INFO),
        Client(target(running), api_key=secrets["reader"]) as c,
    ):
        assert status_of(lambda: c.create_collection("x", dim=2)) == DENIED
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "'reader' has role read" in text
    assert all(s not in text for s in secrets.values())


def test_server_info_names_the_limits_and_offers(client: Client, services: Services) -> None:
    info = client.server_info()
    assert info.version and info.limits.max_k == services.config.max_k
    assert info.limits.max_ids == 10_000 and info.limits.max_aspect == 100
    assert {"mobilenet_v2", "mobilenet_v2@96"} <= {e.name for e in info.embedders}
    assert {j.name for j in info.joint_spaces} >= {"conse:spacy", "conse:minilm"}
    assert set(info.index_kinds) == {pb.INDEX_AUTO, pb.INDEX_EXACT, pb.INDEX_LSH, pb.INDEX_HNSW}
    assert not info.tls and not info.api_keys_required
    np.testing.assert_equal(info.limits.max_message_bytes, services.config.max_message_bytes)


def test_keys_add_prints_the_key_once_and_stores_only_its_hash(
    base_config: Config, services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    cmd = [sys.executable, "-m", "server.admin", "keys", "add", str(path), "--name", "ci", "--role", "write"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip()
    assert secret.startswith("vs_") and len(secret.splitlines()) == 1
    assert secret not in path.read_text() and path.stat().st_mode & 0o077 == 0
    assert "shown once" in out.stderr
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists already" in again.stderr
    with (
        serving(base_config, services, tmp_path, api_keys=str(path)) as running,
        Client(target(running), api_key=secret) as c,
    ):
        assert c.list_collections() == []
        assert status_of(lambda: c.create_collection("x", dim=2)) == DENIED  # write is not admin


def test_the_container_entrypoint_refuses_to_start_without_secrets(
    tmp_path: Path, pki: dict[str, Pair], keys: tuple[Path, dict[str, str]]
) -> None:
    script = ROOT / "deploy" / "docker-entrypoint.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONSEARCH_")}
    out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert (
        "no TLS certificate or API key file was mounted" in out.stderr
        and "VISIONSEARCH_INSECURE" in out.stderr
    )
    mounted = {
        **env,
        "VISIONSEARCH_TLS_CERT": str(pki["server"].cert),
        "VISIONSEARCH_TLS_KEY": str(pki["server"].key),
        "VISIONSEARCH_API_KEYS": str(keys[0]),
        "VISIONSEARCH_PYTHON": sys.executable,
    }
    out = subprocess.run(
        ["sh", str(script), "--help"], env=mounted, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "visionsearch-server" in out.stdout
