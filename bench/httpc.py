"""A tiny HTTP/1.1 keep-alive client over asyncio streams, for load generation.

httpx costs a few hundred microseconds of client CPU per request; on a
2-core machine shared with the server that would be measured as server
latency. This client writes a prebuilt request and reads a
Content-Length-framed response (all the app and the floor app send), and
nothing else: loopback only, no TLS, no chunked bodies, no redirects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection broke or the response could not be read."""


def split_base(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port URLs are supported, got {base!r}")
    return parts.hostname, parts.port or 80


class HttpConn:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        self.last_used = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.reader = self.writer = None

    def build(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        if token is not None:
            head.append(f"Authorization: Bearer {token}\r\n".encode())
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        if body is not None:
            head.append(b"Content-Type: application/json\r\n")
            head.append(f"Content-Length: {len(body)}\r\n".encode())
        head.append(b"\r\n")
        if body is not None:
            head.append(body)
        return b"".join(head)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a prebuilt request and read the response: (status, body)."""
        if not self.connected:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await self.reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(repr(exc)) from None
        if close:
            self.close()
        self.last_used = time.monotonic()
        return status, body

    async def request(
        self, method: str, path: str, *, token: str | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        return await self.send(self.build(method, path, token=token, body=body))


class HttpPool:
    """Keep-alive connections handed out one request at a time, at most `size` open."""

    # uvicorn closes keep-alive connections idle for 5 s; never reuse one that old.
    MAX_IDLE_S = 4.0

    def __init__(self, base: str, size: int = 64) -> None:
        self.host, self.port = split_base(base)
        self.size = size
        self._idle: collections.deque[HttpConn] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[HttpConn]] = collections.deque()
        self.peak_open = 0

    async def acquire(self) -> HttpConn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.connected and now - conn.last_used < self.MAX_IDLE_S:
                return conn
            conn.close()
            self._open -= 1
        if self._open < self.size:
            self._open += 1
            self.peak_open = max(self.peak_open, self._open)
            conn = HttpConn(self.host, self.port)
            try:
                await conn.connect()
            except OSError:
                self._open -= 1
                raise
            return conn
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def release(self, conn: HttpConn) -> None:
        if not conn.connected:
            self._open -= 1
            conn = HttpConn(self.host, self.port)  # a waiter connects it on first send
            if not self._waiters:
                return
            self._open += 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def request(
        self, method: str, path: str, *, token: str | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        conn = await self.acquire()
        try:
            return await conn.request(method, path, token=token, body=body)
        finally:
            self.release(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._open = 0
