"""The asyncio client against the same live server."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from visionsearch_client import AsyncClient, Item, VisionSearchError

from server.app import Running
from tests.conftest import LION


def test_async_client_round_trip(server: Running, fresh_name: str) -> None:
    async def main() -> None:
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=60) as c:
            assert await c.healthy()
            await c.create_collection(fresh_name, dim=3)
            assert await c.upsert(fresh_name, [Item("x", vector=[1, 0, 0]), Item("y", vector=[0, 1, 0])]) == 2
            hits, words, vec = await asyncio.gather(
                c.search(fresh_name, vector=[1, 0.1, 0], k=2),
                c.nearest_words("said", k=5),
                c.embed_image(LION.read_bytes()),
            )
            assert [h.id for h in hits] == ["x", "y"]
            assert words[0].word == "said"
            assert vec.shape == (1280,)
            assert (await c.get_collection(fresh_name)).count == 2
            assert fresh_name in [i.name for i in await c.list_collections()]
            got = await c.get_items(fresh_name, ["y"], with_vector=True)
            np.testing.assert_allclose(got[0].vector, [0, 1, 0])
            assert await c.delete(fresh_name, ["x"]) == 1
            assert await c.count(fresh_name) == 1
            assert (await c.embed_word("cat")).shape == (300,)
            with pytest.raises(VisionSearchError) as info:
                await c.search("missing", vector=[1, 0, 0], k=1)
            assert info.value.code == grpc.StatusCode.NOT_FOUND
            tags = await c.tag(LION.read_bytes(), k=3, vocabulary=["cat", "car", "spoon"])
            assert tags[0].word == "cat"
            await c.drop_collection(fresh_name)

    asyncio.run(main())
