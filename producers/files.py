"""Uploaded files (OpenAI's Files API, purpose `batch`) kept in Redis, so the ingress and the
workers share no disk and any ingress host serves any file.

A file is two keys (worker.keys): its record, a hash (`id`, `filename`, `bytes`, `purpose`,
`created_at`, `owner`: the source name of the token that uploaded it), and its bytes, one
string written with APPEND and read with GETRANGE a chunk at a time, so neither an upload nor
a download is ever whole in the process's memory. Both expire after FILE_TTL_S. Each owner's
files are also in a sorted set by upload time (ms), for listing; an expired file's entry is
dropped when a listing (or an upload) meets it.

What an owner keeps is bounded (FILES_MAX_PER_SOURCE files, FILES_MAX_BYTES_PER_SOURCE bytes):
checked before an upload is read, as it streams in (it stops at the room left), and once more
in the script that records it, so concurrent uploads cannot pass the bound together.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.keys import FILE_PREFIX, file_data_key, file_key, source_files_key

CHUNK = 1 << 20
# What an owner keeps: (files, bytes) of the files in its list (those whose record expired are
# dropped from it); with a file id, that file is recorded (its record, TTLs, the owner's list)
# if it fits: {1, files, bytes} recorded, {0, ...} one file too many, {-1, ...} too many bytes.
# KEYS: the owner's list, the file's record, its data; ARGV: max files, max bytes, file id ('':
# only count), its size, now ms, TTL s, the record key prefix, then the record's fields.
_QUOTA = """
local files, bytes = 0, 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local size = redis.call('HGET', ARGV[7] .. id, 'bytes')
  if size then
    files = files + 1
    bytes = bytes + tonumber(size)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
if ARGV[3] == '' then return {1, files, bytes} end
if files + 1 > tonumber(ARGV[1]) then return {0, files, bytes} end
if bytes + tonumber(ARGV[4]) > tonumber(ARGV[2]) then return {-1, files, bytes} end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {1, files, bytes}
"""
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


class QuotaExceeded(Exception):
    """An upload that would take its owner past FILES_MAX_PER_SOURCE or FILES_MAX_BYTES_PER_SOURCE;
    nothing of it is kept."""


class Files:
    def __init__(self, redis: Redis, ttl_s: int, max_files: int = 2**31, max_bytes: int = 2**62) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_files, self.max_bytes = max_files, max_bytes
        self._quota = redis.register_script(_QUOTA)

    async def put(self, read: Callable[[int], Awaitable[bytes]], filename: str, purpose: str, owner: str) -> FileObject:
        """Store what `read(n)` yields, a chunk at a time, as a new file of `owner` (QuotaExceeded
        if it does not fit what the owner may keep)."""
        _, files, used = await self._quota_call(owner, "", 0, 0, [])
        self._check(owner, files, used, 0)
        file_id = f"file-{uuid.uuid4().hex}"
        data, size = file_data_key(file_id), 0
        await self.redis.set(data, b"", ex=self.ttl_s)
        try:
            while chunk := await read(CHUNK):
                size += len(chunk)
                self._check(owner, files, used, size)
                await self.redis.append(data, chunk)
            now_ms = time.time_ns() // 1_000_000
            now = now_ms // 1000
            found = FileObject(
                id=file_id, bytes=size, created_at=now, filename=filename, purpose=purpose, expires_at=now + self.ttl_s
            )
            record = {**found.model_dump(exclude_none=True), "owner": owner}
            fields = [str(x) for pair in record.items() for x in pair]
            recorded, files, used = await self._quota_call(owner, file_id, size, now_ms, fields)
            if recorded != 1:  # concurrent uploads of the owner took the room
                self._check(owner, files, used, size)
                raise QuotaExceeded(f"{owner}: no room left for this file")
        except BaseException:
            await self.redis.delete(data)
            raise
        return found

    async def _quota_call(self, owner: str, file_id: str, size: int, now_ms: int, fields: list[str]) -> list[int]:
        """_QUOTA: [recorded, files, bytes]; `file_id` '': only count. (Every file has the same
        TTL: the owner's list gets the newest's.)"""
        keys = [source_files_key(owner), file_key(file_id), file_data_key(file_id)]
        args: list[str | int] = [
            self.max_files,
            self.max_bytes,
            file_id,
            size,
            now_ms,
            self.ttl_s,
            FILE_PREFIX,
            *fields,
        ]
        return [int(x) for x in await self._quota(keys=keys, args=args)]

    def _check(self, owner: str, files: int, used: int, size: int) -> None:
        """QuotaExceeded when one more file of `size` bytes does not fit next to `files` files of
        `used` bytes."""
        if files + 1 > self.max_files:
            raise QuotaExceeded(
                f"{owner} keeps {files} files, FILES_MAX_PER_SOURCE={self.max_files}: "
                "delete some (DELETE /v1/files/{id}) or wait until they expire"
            )
        if used + size > self.max_bytes:
            raise QuotaExceeded(
                f"{owner} keeps {used} bytes of files and this one is {size} bytes or more, over "
                f"FILES_MAX_BYTES_PER_SOURCE={self.max_bytes}: delete some (DELETE /v1/files/{{id}}) "
                "or wait until they expire"
            )

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
