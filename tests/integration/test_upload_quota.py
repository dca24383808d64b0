"""A source's upload quota under concurrent uploads (producers.files on a real redis-server): each
upload reserves its room chunk by chunk in one script, so uploads in progress count against the
quota with the files kept; a reservation is a lease, and one that lapsed returns its room and
fails its upload (UploadLapsed: the ingress's 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from harness.wait import wait_until_async
from producers.files import Files, QuotaExceeded, UploadLapsed
from worker.contract.keys import source_uploads_key

OWNER = "uploader"


def reader(*chunks: bytes, then: asyncio.Event | None = None) -> Callable[[int], Awaitable[bytes]]:
    """A file that yields `chunks`, waiting for `then` (if given) before its end."""
    left = list(chunks)

    async def read(_n: int) -> bytes:
        if left:
            return left.pop(0)
        if then is not None:
            await then.wait()
        return b""

    return read


async def test_concurrent_uploads_cannot_pass_the_byte_quota_together(redis):
    files = Files(redis, 3600, max_files=10, max_bytes=4096)
    release = asyncio.Event()
    first = asyncio.create_task(files.put(reader(b"a" * 3000, then=release), "a.jsonl", "batch", OWNER))
    await wait_until_async(lambda: redis.hlen(source_uploads_key(OWNER)), 10, "the first upload's reservation")
    with pytest.raises(QuotaExceeded, match=r"uploads in progress included.*FILES_MAX_BYTES_PER_SOURCE=4096"):
        await files.put(reader(b"b" * 3000), "b.jsonl", "batch", OWNER)
    release.set()
    assert (await first).bytes == 3000
    assert await redis.hlen(source_uploads_key(OWNER)) == 0  # the reservation became the file
    assert (await files.put(reader(b"c" * 1000), "c.jsonl", "batch", OWNER)).bytes == 1000  # 4,000 bytes: fits


async def test_concurrent_uploads_cannot_pass_the_file_count_together(redis):
    files = Files(redis, 3600, max_files=2, max_bytes=1 << 30)
    release = asyncio.Event()
    started = [asyncio.create_task(files.put(reader(b"x", then=release), "x", "batch", OWNER)) for _ in range(2)]

    async def two_in_progress() -> bool:
        return bool(await redis.hlen(source_uploads_key(OWNER)) == 2)

    await wait_until_async(two_in_progress, 10, "two uploads in progress")
    with pytest.raises(QuotaExceeded, match="FILES_MAX_PER_SOURCE=2"):
        await files.put(reader(b"y"), "y", "batch", OWNER)
    release.set()
    assert [f.bytes for f in await asyncio.gather(*started)] == [1, 1]


async def test_a_lapsed_upload_returns_its_room_and_fails(redis):
    """Its lease (0.2 s here) ends with no chunk stored: another upload may take the room, and the
    lapsed one's next chunk fails it (UploadLapsed), nothing of it kept."""
    files = Files(redis, 3600, max_files=10, max_bytes=4096, lease_s=0.2)
    key = source_uploads_key(OWNER)

    async def stalled(_n: int, sent: list[bool] = []) -> bytes:  # noqa: B006 (state between calls)
        if not sent:
            sent.append(True)
            return b"a" * 3000
        [held] = (await redis.hgetall(key)).values()
        ends_s = int(held.split(b":")[1]) / 1000
        while time.time() <= ends_s:  # a process that stalls past its lease
            await asyncio.sleep(0.05)
        assert (await files.put(reader(b"b" * 3000), "b", "batch", OWNER)).bytes == 3000  # the room came back
        return b"a" * 100

    with pytest.raises(UploadLapsed, match=r"UPLOAD_LEASE_S=0\.2"):
        await files.put(stalled, "a", "batch", OWNER)
    assert await redis.hlen(key) == 0
    kept, _ = await files.list(OWNER, limit=10)
    assert [f.filename for f in kept] == ["b"]
    assert await redis.keys("llm-router:file:data:*") == [f"llm-router:file:data:{kept[0].id}".encode()]
