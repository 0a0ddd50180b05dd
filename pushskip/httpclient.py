"""A small HTTP/1.1 client that POSTs to one URL over kept-alive connections.

Webhooks are delivered from the event loop that serves the skips, so each one
must cost that loop little. Measured here (`python -m bench --phases
integrations`, and a loop of 2,000 POSTs to a local receiver): httpx spent
~1 ms of CPU per request, aiohttp ~0.24 ms, this client ~0.06 ms. It does only
what a webhook POST needs, and leaves the parsing of the answer to
`httptools` (the C parser uvicorn uses):

- `post(body, headers)` answers the status code (redirects are not followed:
  a 3xx is a status like any other); the answer's body is read and dropped;
- connections are kept alive and reused (at most `max_connections` at once,
  callers beyond that wait), unless the server says `Connection: close`;
- a reused connection that the server closed while idle is replaced and the
  request sent once more on a new one (the server never saw it);
- `https://` URLs go over TLS with the system's trust store (or `ssl_context`);
- the whole exchange, waiting for a connection included, is bounded by
  `timeout_s`; past it the connection is dropped and `PostError` raised.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import urlsplit

import httptools

MAX_ANSWER_BYTES = 1024 * 1024


class PostError(Exception):
    """No answer: the connection failed, timed out, or the answer was not HTTP."""


class _Stale(Exception):
    """A kept-alive connection was closed before the request got any answer."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # asyncio's, or uvloop's (which is not an asyncio.Transport subclass).
        self.transport: Any = None
        self.answer: asyncio.Future[int] | None = None
        self.received = 0
        self.closed = False
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.answer is None or self.received > MAX_ANSWER_BYTES:
            self.close()  # bytes nobody asked for, or an answer too large to wait out
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(PostError(f"not an HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.received == 0:
            self._fail(_Stale())
        else:
            self._fail(PostError(f"connection closed mid-answer: {exc!r}"))

    # httptools callbacks
    def on_message_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_result(self.parser.get_status_code())

    def _fail(self, exc: Exception) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.received = 0
        self.parser = httptools.HttpResponseParser(self)
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PostClient:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        max_connections: int,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        fixed = {"host": host_header, **{k.lower(): v for k, v in (headers or {}).items()}}
        self._head = f"POST {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fixed.items()
        )
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __repr__(self) -> str:
        return f"PostClient(url={self.url!r}, open={self._open})"

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` with `headers` (and the client's own); the answer's status code."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"{self._head}{extra}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._exchange(request)
        except TimeoutError:
            raise PostError(f"no answer in {self.timeout_s:g} s") from None

    async def _exchange(self, request: bytes) -> int:
        for _ in range(2):
            conn, reused = await self._acquire()
            ok = False
            try:
                status = await conn.send(request)
                ok = conn.keep_alive and not conn.closed
                return status
            except _Stale:
                if reused:
                    continue  # the server dropped it while idle; it never saw this request
                raise PostError("connection closed before any answer") from None
            finally:
                self._release(conn, ok)
        raise PostError("connection closed before any answer")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._open -= 1
        while self._open >= self.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
                self._open -= 1
        self._open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port, ssl=self.ssl
            )
        except (OSError, ssl.SSLError) as exc:
            self._open -= 1
            self._wake_one()
            raise PostError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from None
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return conn, False

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable:
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
