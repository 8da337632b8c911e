"""visionsearch-ingest on a real local Ray instance (num_cpus=2) with real photos (Tux Paint, Fashion-MNIST),
writing to a real server on port 0, to Parquet, and to Milvus Lite.

The Ray instance is started once for the module, in this process; the kill test's job runs in a child
process that joins it with --address, so it also covers joining an existing cluster.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from visionsearch_client import Client, Item, VisionSearchError

from embedder import assets
from embedder.datasets import FASHION_CLASSES, fashion_mnist, tuxpaint_photos
from embedder.image import ImageNetwork, decode_pixels
from ingest.cli import DUPLICATE, Summary, main, parser, run
from ingest.pipeline import NOT_AN_IMAGE, TOO_LARGE, UNREADABLE, start_ray
from ingest.sinks import SinkError
from ingest.sources import MAX_ID_BYTES, SourceError, list_source, make_id
from server.app import Running
from tests.conftest import LION, ROOT

FASHION_N = 1500  # per folder; two folders are embedded (Parquet, and the kill + rerun)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    import ray

    # ray.init() sets environment variables and a SIGTERM handler in this process; the rest of the suite
    # gets them back as they were.
    env, on_sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)
    start_ray(None, 2)
    assert ray.cluster_resources()["CPU"] == 2
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, on_sigterm)


def ingest(*argv: str) -> Summary:
    return run(parser().parse_args([*argv, "--data-dir", str(ROOT / "data")]))


def write_fashion(folder: Path, n: int, offset: int = 0) -> list[str]:
    """The Fashion-MNIST test photos ``offset..offset+n`` as PNG files in one folder per class; their ids."""
    images, labels = fashion_mnist("test")
    ids = []
    for i in range(offset, offset + n):
        rel = f"{FASHION_CLASSES[labels[i]].replace('/', '-')}/{i:05d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(folder / rel)
        ids.append(rel)
    return ids


@pytest.fixture(scope="module")
def tux_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Every 8th Tux Paint stamp photo and the lion, listed in a CSV with payload columns (absolute paths)."""
    path = tmp_path_factory.mktemp("tux") / "photos.csv"
    photos = [p for n, p in enumerate(tuxpaint_photos()) if n % 8 == 0 or p.path == LION]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "name", "caption", "category"])
        for p in photos:
            w.writerow([str(p.path), p.name, p.caption, p.category])
    return path, [str(p.path) for p in photos]


def test_vectors_equal_the_servers_embed(
    ray_address: str,
    client: Client,
    server: Running,
    fresh_name: str,
    tux_csv: tuple[Path, list[str]],
    tmp_path: Path,
) -> None:
    csv_path, paths = tux_csv
    address = f"127.0.0.1:{server.port}"
    # The server's own backbone, so that its Embed is the reference (the job builds the same network).
    s = ingest(str(csv_path), "--server", address, "--collection", fresh_name, "--create",
               "--embedder", "efficientnet_lite1", "--joint", "conse:spacy", "--actors", "2")  # fmt: skip
    assert (s.written, s.skipped, s.failures, s.actors) == (len(paths), 0, [], 2)
    assert client.count(fresh_name) == len(paths)
    stored = {i.id: i for i in client.get_items(fresh_name, paths, with_vector=True)}
    assert set(stored) == set(paths)  # a CSV's ids are its paths as written
    lion = stored[str(LION)]
    assert lion.payload["name"] == "lion" and lion.payload["category"] == "animals"
    assert lion.payload["caption"] == next(p.caption for p in tuxpaint_photos() if p.path == LION) != ""
    assert lion.payload["source"] == str(LION)

    # The same photos to Parquet, with the joint vectors computed by the job itself.
    p = ingest(str(csv_path), "--parquet", str(tmp_path / "pq"), "--joint", "conse:spacy", "--actors", "2",
               "--embedder", "efficientnet_lite1")  # fmt: skip
    assert (p.written, p.failures) == (len(paths), [])
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "pq").to_pylist()}
    assert set(rows) == set(paths)
    for path in paths:
        embedded = client.embed_image(Path(path).read_bytes())  # the server's Embed, 240 px
        # Raw features in Parquet, unit ones in a cosine collection; float noise only (batch shapes differ).
        np.testing.assert_allclose(rows[path]["vector"], embedded, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stored[path].vector, unit(embedded), atol=1e-6)
        # The joint vector the job computed equals the one the server projected from the upserted features
        # (a vector query in the joint space is projected the same way, and finds the item itself).
        hit = client.search(fresh_name, vector=rows[path]["vector"], space="joint", k=1, with_vector=True)[0]
        assert hit.id == path and hit.score > 0.9999
        np.testing.assert_allclose(hit.vector, unit(np.asarray(rows[path]["joint"])), atol=1e-5)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("fashion")
    return folder, write_fashion(folder, FASHION_N)


def test_fashion_mnist_to_parquet_at_96px(
    ray_address: str, client: Client, fresh_name: str, fashion_dir: tuple[Path, list[str]], tmp_path: Path
) -> None:
    folder, ids = fashion_dir
    out = tmp_path / "out"
    s = ingest(str(folder), "--parquet", str(out), "--embedder", "mobilenet_v2@96", "--joint", "conse:spacy",
               "--write-batch", "500")  # fmt: skip
    assert (s.listed, s.written, s.failures, s.actors) == (FASHION_N, FASHION_N, [], 2)
    assert len(list(out.glob("part-*.parquet"))) == 3  # 500 rows per part
    table = pq.read_table(out)
    assert table.column_names == ["id", "vector", "joint", "source"]
    assert sorted(table.column("id").to_pylist()) == sorted(ids)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert {len(r["vector"]) for r in rows.values()} == {1280}
    assert {len(r["joint"]) for r in rows.values()} == {300}
    assert rows[ids[0]]["source"] == str(folder / ids[0])
    # A sample against the server's own image path at 96 px (upsert of the encoded image, then GetItems).
    client.create_collection(fresh_name, embedder="mobilenet_v2@96")
    sample = ids[::100]
    client.upsert(fresh_name, [Item(i, image=(folder / i).read_bytes()) for i in sample])
    for item in client.get_items(fresh_name, sample, with_vector=True):
        np.testing.assert_allclose(unit(np.asarray(rows[item.id]["vector"])), item.vector, atol=1e-6)
    # A rerun finds every id in the part files and embeds nothing.
    again = ingest(
        str(folder), "--parquet", str(out), "--embedder", "mobilenet_v2@96", "--joint", "conse:spacy"
    )
    assert (again.skipped, again.written) == (FASHION_N, 0)
    assert len(list(out.glob("part-*.parquet"))) == 3


def test_killed_job_resumes_and_every_photo_is_present_once(
    ray_address: str, client: Client, server: Running, fresh_name: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    ids = write_fashion(folder, FASHION_N, offset=FASHION_N)
    address = f"127.0.0.1:{server.port}"
    argv = [str(folder), "--server", address, "--collection", fresh_name, "--embedder", "mobilenet_v2@96",
            "--actors", "2", "--batch-size", "8", "--write-batch", "50"]  # fmt: skip
    # A local ray.init() turns on Ray's token authentication (the token is in ~/.ray/auth_token); a driver
    # that joins a cluster by address must ask for it, as the README says.
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "clients/python/src"), str(ROOT)])}  # fmt: skip
    log = tmp_path / "job.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "ingest", *argv, "--create", "--address", ray_address],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        count = 0
        while count < FASHION_N // 3:  # kill it once a third is written, well before the end
            assert child.poll() is None, f"the job ended before it was killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the job wrote too little in 240 s"
            time.sleep(0.05)
            try:
                count = client.count(fresh_name)
            except VisionSearchError:
                count = 0  # not created yet
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    at_kill = client.count(fresh_name)
    assert FASHION_N // 3 <= at_kill < FASHION_N, "the job was not killed part-way: raise FASHION_N"
    s = ingest(*argv)
    assert (s.skipped, s.written, s.failures) == (at_kill, FASHION_N - at_kill, [])
    assert client.count(fresh_name) == FASHION_N
    stored = client.get_items(fresh_name, ids)
    assert sorted(i.id for i in stored) == sorted(ids)  # every photo, each once
    assert all(i.payload["source"] == str(folder / i.id) for i in stored)


def test_bad_files_are_counted_reported_and_skipped(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    good = write_fashion(folder, 20)
    (folder / "notes.jpg").write_text("not a photo at all")
    png = (folder / good[0]).read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.new("RGB", (400, 300), "red").save(folder / "huge.png")  # 120,000 pixels, over --max-pixels below
    (folder / "gone.png").symlink_to(folder / "deleted.png")  # a dangling link: listed, then unreadable
    (folder / "readme.txt").write_text("not named like an image: ignored")
    out = tmp_path / "out"
    code = main([f"{folder}/**/*.*", "--parquet", str(out), "--max-pixels", "100000", "--embedder",
                 "mobilenet_v2@64", "--actors", "1", "--report", str(tmp_path / "report.json")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["written"] == 20 and report["ignored"] == 1 and report["listed"] == 24
    assert report["failure_counts"] == {NOT_AN_IMAGE: 2, TOO_LARGE: 1, UNREADABLE: 1}
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    assert (
        "could not be decoded" in reasons["notes.jpg"] and "could not be decoded" in reasons["truncated.png"]
    )
    assert "400x300 = 120,000 pixels" in reasons["huge.png"] and "100,000" in reasons["huge.png"]
    assert "FileNotFoundError" in reasons["gone.png"]
    assert sorted(pq.read_table(out).column("id").to_pylist()) == sorted(good)
    printed = capsys.readouterr().out
    assert (
        "failed 4" in printed
        and "over the pixel limit: 1" in printed
        and "huge.png: image is 400x300" in printed
    )

    # A list with a missing file and two rows of one id: both reported, the rest written.
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,id,label\n"
        f"{folder / good[0]},a,first\n{folder / good[1]},a,second\n"
        f"{folder / 'missing.png'},b,x\n{folder / good[2]},c,y\n"
    )
    s = ingest(str(listing), "--id-column", "id", "--parquet", str(tmp_path / "out2"),
               "--embedder", "mobilenet_v2@64", "--actors", "1")  # fmt: skip
    assert s.written == 2 and {(f.id, f.kind) for f in s.failures} == {("a", DUPLICATE), ("b", UNREADABLE)}
    labels = dict(
        zip(*pq.read_table(tmp_path / "out2", columns=["id", "label"]).to_pydict().values(), strict=True)
    )
    assert labels == {"a": "first", "c": "y"}


def test_milvus_lite_output_and_resume(
    ray_address: str, tux_csv: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from pymilvus import MilvusClient

    csv_path, paths = tux_csv
    uri = str(tmp_path / "milvus.db")
    argv = [str(csv_path), "--milvus", uri, "--milvus-collection", "stamps", "--joint", "conse:spacy",
            "--embedder", "mobilenet_v2@96", "--actors", "1", "--limit", "30"]  # fmt: skip
    s = ingest(*argv)
    assert (s.written, s.failures) == (30, [])
    m = MilvusClient(uri=uri)
    try:
        rows = m.query(
            "stamps", filter='id != ""', output_fields=["id", "vector", "joint", "caption", "source"]
        )
        assert sorted(r["id"] for r in rows) == sorted(paths[:30])
        network = ImageNetwork(str(assets.mobilenet_v2_weights()))
        lion = next(r for r in rows if r["id"] == str(LION))
        want = network.forward_pixels(decode_pixels(Path(lion["id"]).read_bytes(), 40_000_000, 96)[None])[0]
        np.testing.assert_allclose(lion["vector"], want, rtol=1e-4, atol=1e-5)
        assert len(lion["joint"]) == 300 and lion["caption"] == "A lion."
        # Search in Milvus by the lion's own vector finds the lion.
        hits = m.search("stamps", data=[want.tolist()], anns_field="vector", limit=1, output_fields=["id"])
        assert hits[0][0]["id"] == lion["id"]
    finally:
        m.close()
    # Resume: the 30 written are skipped, the next 10 are added.
    argv[-1] = "40"
    again = ingest(*argv)
    assert (again.skipped, again.written) == (30, 10)
    m = MilvusClient(uri=uri)
    try:
        assert len(m.query("stamps", filter='id != ""', output_fields=["id"])) == 40
    finally:
        m.close()


# ---------------------------------------------------------------- sources and refusals (no Ray needed)


def test_sources_derive_ids_from_paths(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.PNG", "a/b/y.jpg", "a/b/z.txt", "top.webp"):
        (tmp_path / name).write_bytes(b"")
    folder = list_source(str(tmp_path))
    assert [p.id for p in folder.photos] == ["a/b/y.jpg", "a/x.PNG", "top.webp"] and folder.ignored == 1
    assert folder.photos[0].payload == {"source": str(tmp_path / "a/b/y.jpg")}
    globbed = list_source(f"{tmp_path}/a/**/*.jpg")
    assert [p.id for p in globbed.photos] == ["b/y.jpg"]  # relative to the glob's fixed part
    table = tmp_path / "list.csv"
    table.write_text("path,sku\na/x.PNG,007\n")
    (row,) = list_source(str(table)).photos
    full = str(tmp_path / "a/x.PNG")
    assert (row.id, row.path, row.payload) == ("a/x.PNG", full, {"sku": "007", "source": full})
    long = "d/" * 200 + "photo.png"
    assert len(make_id(long).encode()) <= MAX_ID_BYTES and make_id(long) != make_id(long + "x")
    assert make_id(long) == make_id(long)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nothing-here"], "does not exist"),
        (["{tmp}/list.csv", "--path-column", "file"], "has no column 'file'"),
        (["{tmp}"], "name exactly one output"),
        (["{tmp}", "--parquet", "{tmp}/o", "--milvus", "{tmp}/m.db"], "name exactly one output"),
        (["{tmp}", "--parquet", "{tmp}/o", "--embedder", "resnet"], "--embedder 'resnet' is unknown"),
        (["{tmp}", "--parquet", "{tmp}/o", "--joint", "conse:nope"], "joint space 'conse:nope' is unknown"),
        (["{tmp}", "--parquet", "{tmp}/o", "--address", "127.0.0.1:1", "--num-cpus", "2"], "has its own"),
        (
            ["{tmp}", "--collection", "c", "--server", "127.0.0.1:1"],
            "collection 'c' at 127.0.0.1:1: UNAVAILABLE",
        ),
        (
            ["{tmp}", "--milvus", "http://127.0.0.1:1"],
            "Milvus collection 'visionsearch' at http://127.0.0.1:1: ",
        ),
    ],
)
def test_bad_arguments_say_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "list.csv").write_text("path\nx.png\n")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_collection_needs_create(
    client: Client, server: Running, fresh_name: str, tmp_path: Path
) -> None:
    with pytest.raises(SinkError, match="pass --create"):
        ingest(str(tmp_path), "--server", f"127.0.0.1:{server.port}", "--collection", fresh_name)
    client.create_collection(fresh_name, embedder="mobilenet_v2@96", joint="conse:spacy")
    with pytest.raises(SinkError, match="projects upserted features"):
        ingest(str(tmp_path), "--server", f"127.0.0.1:{server.port}", "--collection", fresh_name,
               "--joint", "conse:minilm")  # fmt: skip


def test_more_actors_than_cpus_is_refused(
    ray_address: str, fashion_dir: tuple[Path, list[str]], tmp_path: Path
) -> None:
    with pytest.raises(SinkError, match="--actors 3 needs as many CPUs, and the Ray cluster has 2"):
        ingest(str(fashion_dir[0]), "--parquet", str(tmp_path), "--actors", "3")


def test_a_list_that_is_not_csv_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "list.parquet"
    bad.write_text("not parquet")
    with pytest.raises(SourceError, match="could not be read as PARQUET"):
        list_source(str(bad))
