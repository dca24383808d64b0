"""Uploaded files (OpenAI's Files API, purpose `batch`) kept in Redis, so the ingress and the
workers share no disk and any ingress host serves any file.

A file is two keys (worker.keys): its record, a hash (`id`, `filename`, `bytes`, `purpose`,
`created_at`, `owner`: the source name of the token that uploaded it), and its bytes, one
string written with APPEND and read with GETRANGE a chunk at a time, so neither an upload nor
a download is ever whole in the process's memory. Both expire after FILE_TTL_S. Each owner's
files are also in a sorted set by upload time (ms), for listing; an expired file's entry is
dropped when a listing meets it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.keys import file_data_key, file_key, source_files_key

CHUNK = 1 << 20
# File ids read from an owner's list per round trip while listing.
LIST_CHUNK = 500
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


class FileObject(BaseModel):
    """OpenAI's File object (`openai.types.FileObject`)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None


class Files:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def put(self, read: Callable[[int], Awaitable[bytes]], filename: str, purpose: str, owner: str) -> FileObject:
        """Store what `read(n)` yields, a chunk at a time, as a new file of `owner`."""
        file_id = f"file-{uuid.uuid4().hex}"
        data, size = file_data_key(file_id), 0
        await self.redis.set(data, b"", ex=self.ttl_s)
        while chunk := await read(CHUNK):
            await self.redis.append(data, chunk)
            size += len(chunk)
        now_ms = time.time_ns() // 1_000_000
        now = now_ms // 1000
        found = FileObject(
            id=file_id, bytes=size, created_at=now, filename=filename, purpose=purpose, expires_at=now + self.ttl_s
        )
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(file_key(file_id), mapping={**found.model_dump(exclude_none=True), "owner": owner})
            tx.expire(file_key(file_id), self.ttl_s)
            tx.expire(data, self.ttl_s)
            tx.zadd(source_files_key(owner), {file_id: now_ms})
            tx.expire(source_files_key(owner), self.ttl_s)  # every file has the same TTL: the newest's
            await tx.execute()
        return found

    async def get(self, file_id: str, owner: str) -> FileObject | None:
        """The file's record; None when there is none, or it is another owner's."""
        if not FILE_ID.match(file_id):
            return None
        raw = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(file_key(file_id))).items()}  # type: ignore[misc]
        if raw.pop("owner", None) != owner:
            return None
        return FileObject.model_validate(raw)

    async def list(
        self, owner: str, *, limit: int, after: str | None = None, descending: bool = True, purpose: str | None = None
    ) -> tuple[list[FileObject], bool]:
        """Up to `limit` of the owner's files by upload time (newest first unless not
        `descending`), those after the file `after` (a cursor; an unknown one: none), only
        `purpose`'s if given; and whether there are more."""
        index = source_files_key(owner)
        rank = self.redis.zrevrank if descending else self.redis.zrank
        page = self.redis.zrevrange if descending else self.redis.zrange
        start = 0
        if after is not None:
            found_rank = await rank(index, after)
            if found_rank is None:
                return [], False
            start = found_rank + 1
        files: list[FileObject] = []
        while len(files) <= limit:
            ids = [i.decode() for i in await page(index, start, start + LIST_CHUNK - 1)]
            if not ids:
                break
            start += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for file_id in ids:
                    pipe.hgetall(file_key(file_id))
                records = await pipe.execute()
            gone = []
            for file_id, record in zip(ids, records, strict=True):
                raw = {k.decode(): v.decode() for k, v in record.items()}
                if raw.pop("owner", None) != owner:
                    gone.append(file_id)
                elif purpose is None or raw.get("purpose") == purpose:
                    files.append(FileObject.model_validate(raw))
            if gone:  # expired (or deleted elsewhere): forget them
                await self.redis.zrem(index, *gone)
                start -= len(gone)
        return files[:limit], len(files) > limit

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, a chunk at a time."""
        start = 0
        while chunk := await self.redis.getrange(file_data_key(file_id), start, start + CHUNK - 1):
            yield chunk
            start += len(chunk)

    async def download(self, file_id: str, target: IO[bytes]) -> None:
        async for chunk in self.chunks(file_id):
            target.write(chunk)

    async def delete(self, file_id: str, owner: str) -> bool:
        if await self.get(file_id, owner) is None:
            return False
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(file_key(file_id), file_data_key(file_id))
            tx.zrem(source_files_key(owner), file_id)
            await tx.execute()
        return True
