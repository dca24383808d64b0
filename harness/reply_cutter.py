"""A TCP proxy to Redis that loses one answer: the command ran, its client saw the connection
drop (a Redis restart or failover at the wrong moment), and the client's retry sends it again."""

from __future__ import annotations

import asyncio


class ReplyCutter:
    """A TCP proxy to Redis that, once armed with a marker, forwards the next command holding it
    and then cuts the connection instead of forwarding Redis's answer: the command ran, its
    client saw a connection error (a Redis restart or failover at the wrong moment)."""

    def __init__(self, redis_url: str) -> None:
        self.target = redis_url.split("//")[1].split("/")[0].split(":")
        self.marker: bytes | None = None
        self.cuts = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target[0], int(self.target[1]))
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.marker is not None and self.marker in data:
                    self.marker = None
                    cut.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if cut.is_set():
                    self.cuts += 1
                    break
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.close()
        up_writer.close()
