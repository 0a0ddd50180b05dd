"""A minimal RESP2 pipeline client for the bench's re-pairing (EVALSHA batches).

redis-py's pipeline costs the driver ~0.5 ms of CPU per execute, which on a
2-core machine is CPU taken from the server under test; this writes the
commands as one buffer and parses only what the scripts return (simple
strings, errors, integers, bulk strings, arrays).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class RespError(Exception):
    pass


def encode(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Resp:
    def __init__(self, url: str) -> None:
        self.url = url
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            self.reader, self.writer = await asyncio.open_unix_connection(parts.path, limit=2**24)
        else:
            self.reader, self.writer = await asyncio.open_connection(
                parts.hostname or "127.0.0.1", parts.port or 6379, limit=2**24
            )
        if parts.password:
            user = unquote(parts.username) if parts.username else None
            args = (
                ["AUTH", user, unquote(parts.password)]
                if user
                else ["AUTH", unquote(parts.password)]
            )
            await self._send([args])
        if parts.scheme == "unix":
            db = parse_qs(parts.query).get("db", [""])[0]
        else:
            db = parts.path.strip("/")
        if db.isdigit() and db != "0":
            (selected,) = await self._send([["SELECT", db]])
            if isinstance(selected, RespError):
                raise selected

    async def _read(self) -> Any:
        assert self.reader is not None
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = await self.reader.readexactly(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._read() for _ in range(n)]
        raise RespError(f"unexpected reply {line[:40]!r}")

    async def pipeline(self, commands: list[list[Any]]) -> list[Any]:
        """Send every command, then read every reply (errors come back as RespError values)."""
        async with self.lock:
            if self.writer is None:
                await self.connect()
            return await self._send(commands)

    async def _send(self, commands: list[list[Any]]) -> list[Any]:
        """The pipeline on the open connection (the caller holds the lock, or is connecting)."""
        assert self.writer is not None
        self.writer.write(b"".join(encode(*c) for c in commands))
        return [await self._read() for _ in commands]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
