"""worker.contract.connections packs commands with hiredis: the same bytes as redis-py's own packer."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from worker.contract import connections

COMMANDS = [
    ("EVALSHA", "53f7da1aa58ed5c1a9ed59537d0ff37d784e2956", 3, "llm-router:gate", "k2", "k3", 0.0, 524, 1.5e-07, -3),
    ("SET", "k", "é ünïcode", "EX", 10),
    ("SET", b"k", b"\x00\xff raw", 2**70, float("inf"), -0.0, 1.0000000000000002),
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", "maxmemory"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "big", "x" * 100_000),
]


def test_the_worker_packs_with_hiredis() -> None:
    assert AbstractConnection.pack_command is connections._pack_command_hiredis


@pytest.mark.parametrize("args", COMMANDS)
def test_same_bytes_as_redis_py(args: tuple) -> None:
    conn = Connection()
    assert b"".join(conn.pack_command(*args)) == b"".join(connections._python_pack(conn, *args))
    many = conn.pack_commands([args, args])
    assert b"".join(bytes(c) for c in many) == 2 * b"".join(connections._python_pack(conn, *args))


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), object()])
def test_what_redis_py_refuses_it_refuses_the_same_way(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        Connection().pack_command("SET", "k", bad)


def test_another_encoding_goes_through_redis_py() -> None:
    conn = Connection(encoding="latin-1")
    assert b"".join(conn.pack_command("SET", "k", "é")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
