"""Uploaded files (OpenAI's Files API, purpose `batch`) kept in Redis, so the ingress and the
workers share no disk and any ingress host serves any file.

A file is two keys (worker.contract.keys): its record, a hash (`id`, `filename`, `bytes`, `purpose`,
`created_at`, `owner`: the source name of the token that uploaded it), and its bytes, one
string written with APPEND and read with GETRANGE a chunk at a time, so neither an upload nor
a download is ever whole in the process's memory. Both expire after FILE_TTL_S. Each owner's
files are also in a sorted set by upload time (ms), for listing; an expired file's entry is
dropped when a listing (or an upload) meets it.

What an owner keeps is bounded (FILES_MAX_PER_SOURCE files, FILES_MAX_BYTES_PER_SOURCE bytes),
uploads in progress included: an upload reserves its room chunk by chunk in one script (in the
hash `llm-router:source-uploads:<owner>`) before it stores the chunk, so concurrent uploads cannot
pass the bound together. A reservation is a lease, renewed by each chunk: one not renewed within
UPLOAD_LEASE_S (a process that stalled or died) lapses and its room is returned.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.contract.keys import FILE_PREFIX, file_data_key, file_key, source_files_key, source_uploads_key
from worker.lua import registry as lua

CHUNK = 1 << 20
# A download's chunk: what a client that reads slowly (or not at all) makes the ingress hold (one
# chunk waits in the transport's buffer), against a GETRANGE per chunk.
READ_CHUNK = 64 * 1024
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


class UploadLapsed(Exception):
    """An upload whose reservation of its owner's quota was not renewed within UPLOAD_LEASE_S
    (the process stalled): its room was returned to the owner and nothing of it is kept; send it again."""


class Files:
    def __init__(
        self, redis: Redis, ttl_s: int, max_files: int = 2**31, max_bytes: int = 2**62, lease_s: float = 300
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_files, self.max_bytes = max_files, max_bytes
        self.lease_ms = max(1, int(lease_s * 1000))
        # reserve an upload's room (and renew its lease), record a stored file: worker/lua/files_<name>.lua
        self._reserve = lua.register(redis, "files_reserve")
        self._record = lua.register(redis, "files_record")

    async def put(self, read: Callable[[int], Awaitable[bytes]], filename: str, purpose: str, owner: str) -> FileObject:
        """Store what `read(n)` yields, a chunk at a time, as a new file of `owner`. Each chunk's
        room is reserved first (the owner's kept files and its other uploads in progress count:
        concurrent uploads cannot pass the quota together), renewing the upload's lease.
        QuotaExceeded if it does not fit, UploadLapsed if its lease lapsed; then nothing is kept."""
        file_id = f"file-{uuid.uuid4().hex}"
        data, size = file_data_key(file_id), 0
        await self._take(owner, file_id, 0, start=True)
        try:
            await self.redis.set(data, b"", ex=self.ttl_s)
            while chunk := await read(CHUNK):
                await self._take(owner, file_id, len(chunk), size=size)
                size += len(chunk)
                await self.redis.append(data, chunk)
            now_ms = time.time_ns() // 1_000_000
            now = now_ms // 1000
            found = FileObject(
                id=file_id, bytes=size, created_at=now, filename=filename, purpose=purpose, expires_at=now + self.ttl_s
            )
            record = {**found.model_dump(exclude_none=True), "owner": owner}
            fields = [str(x) for pair in record.items() for x in pair]
            keys = [source_files_key(owner), source_uploads_key(owner), file_key(file_id), data]
            if await self._record(keys=keys, args=[file_id, now_ms, self.ttl_s, file_id, *fields]) != 1:
                raise self._lapsed()
        except BaseException:
            async with self.redis.pipeline(transaction=False) as pipe:  # its room back, its bytes gone
                pipe.hdel(source_uploads_key(owner), file_id)
                pipe.delete(data)
                await pipe.execute()
            raise
        return found

    async def _take(self, owner: str, upload_id: str, chunk: int, size: int = 0, start: bool = False) -> None:
        """Reserve `chunk` more bytes for the upload (`start`: the file itself); QuotaExceeded or
        UploadLapsed if that cannot be."""
        keys = [source_files_key(owner), source_uploads_key(owner)]
        now_ms = time.time_ns() // 1_000_000
        args: list[str | int] = [
            FILE_PREFIX,
            self.max_files,
            self.max_bytes,
            upload_id,
            chunk,
            now_ms,
            self.lease_ms,
            int(start),
        ]
        status, files, used = (int(x) for x in await self._reserve(keys=keys, args=args))
        if status == -2:
            raise self._lapsed()
        if status == 0:
            raise QuotaExceeded(
                f"{owner} keeps {files} files (uploads in progress included), FILES_MAX_PER_SOURCE={self.max_files}: "
                "delete some (DELETE /v1/files/{id}) or wait until they expire"
            )
        if status == -1:
            raise QuotaExceeded(
                f"{owner} keeps {used} bytes of files (uploads in progress included) and this one is "
                f"{size + chunk} bytes or more, over FILES_MAX_BYTES_PER_SOURCE={self.max_bytes}: delete some "
                "(DELETE /v1/files/{id}) or wait until they expire"
            )

    def _lapsed(self) -> UploadLapsed:
        return UploadLapsed(
            f"this upload's reservation of its source's file quota lapsed (UPLOAD_LEASE_S={self.lease_ms / 1000:g} s "
            "without a chunk stored): nothing of it was kept; send it again"
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
        while chunk := await self.redis.getrange(file_data_key(file_id), start, start + READ_CHUNK - 1):
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
