"""Count what this process sends to Redis: commands and round trips (writes), client side.

Redis's own counters (`INFO commandstats`, `total_commands_processed`) also count the commands
a Lua script runs inside, so they cannot tell a script call from the work it does; this counts
what crosses the wire from this process, for every redis-py asyncio connection it opens.

    with RedisTraffic() as traffic:
        ...  # run jobs
    traffic.commands, traffic.round_trips, traffic.by_name
    traffic.round_trips_with(shas)  # the round trips that carried one of these scripts
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any

from redis.asyncio.connection import AbstractConnection


class RedisTraffic:
    def __init__(self) -> None:
        self.round_trips = 0
        self.raw_names: Counter[Any] = Counter()
        self.scripts: Counter[str] = Counter()  # EVALSHA calls by the script's SHA1
        self.sent: list[frozenset[str]] = []  # the scripts (SHA1s) each round trip carried
        self._saved: tuple[Any, Any] | None = None

    @property
    def commands(self) -> int:
        return sum(self.raw_names.values())

    @property
    def by_name(self) -> Counter[str]:
        """Commands by name (EVALSHA, ZRANGEBYSCORE, ...)."""
        named: Counter[str] = Counter()
        for raw, count in self.raw_names.items():
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            named[name.split()[0].upper()] += count
        return named

    def round_trips_with(self, shas: set[str] | frozenset[str]) -> int:
        """Round trips that carried at least one of these scripts: the jobs' own, when `shas` are
        theirs, however many polls and timers ran beside them (a loaded machine runs more)."""
        return sum(1 for carried in self.sent if carried & shas)

    def __enter__(self) -> RedisTraffic:
        pack, send = AbstractConnection.pack_command, AbstractConnection.send_packed_command
        self._saved = (pack, send)
        traffic = self
        pending: dict[AbstractConnection, set[str]] = {}

        def pack_command(conn: AbstractConnection, *args: Any) -> Any:
            traffic.raw_names[args[0]] += 1  # cheap here: named when read (by_name)
            if args[0] in ("EVALSHA", b"EVALSHA"):
                sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
                traffic.scripts[sha] += 1
                pending.setdefault(conn, set()).add(sha)  # sent with the connection's next write
            return pack(conn, *args)

        async def send_packed_command(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            traffic.round_trips += 1
            traffic.sent.append(frozenset(pending.pop(conn, ())))
            await send(conn, command, check_health)

        AbstractConnection.pack_command = pack_command  # type: ignore[method-assign,assignment]
        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        assert self._saved is not None
        AbstractConnection.pack_command, AbstractConnection.send_packed_command = self._saved  # type: ignore[method-assign]

    def reset(self) -> None:
        self.round_trips = 0
        self.raw_names.clear()
        self.scripts.clear()
        self.sent.clear()
