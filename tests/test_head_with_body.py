"""A response's head goes out with its body (server.HeadWithBody), and nothing is held back."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from pushskip.server import HeadWithBody

CLIENT_SCRIPT = Path(__file__).resolve().parents[1] / "static" / "pushskip.js"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


async def test_the_head_goes_out_with_the_first_body_write() -> None:
    sent = Recorder()
    joined = HeadWithBody(sent)  # type: ignore[arg-type]
    joined.write(b"HEAD\r\n\r\n")
    assert sent.writes == []
    joined.write(b"body-1")
    joined.write(b"body-2")
    assert sent.writes == [b"HEAD\r\n\r\nbody-1", b"body-2"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert len(sent.writes) == 2
    assert joined.get_extra_info("peername") == "info:peername"


async def test_a_head_waits_no_longer_than_the_turn_or_a_close() -> None:
    sent = Recorder()
    joined = HeadWithBody(sent)  # type: ignore[arg-type]
    joined.write(b"HEAD\r\n\r\n")  # a streamed body whose first chunk is slow
    await asyncio.sleep(0)
    assert sent.writes == [b"HEAD\r\n\r\n"]
    joined.write(b"chunk")
    assert sent.writes[1:] == [b"chunk"]

    sent = Recorder()
    joined = HeadWithBody(sent)  # type: ignore[arg-type]
    joined.write(b"HEAD\r\n\r\n")
    joined.close()
    assert sent.writes == [b"HEAD\r\n\r\n"] and sent.closed and joined.is_closing()


async def test_requests_are_freed_without_the_cycle_collector(http: httpx.AsyncClient) -> None:
    """The wrapper makes no reference loop: with the collector off, a keep-alive
    connection's finished requests do not pile up (heap.py freezes what survives)."""
    await http.get("/healthz")
    gc.disable()
    try:
        for _ in range(50):
            assert (await http.post("/api/session")).status_code == 200
        alive = [o for o in gc.get_objects() if type(o) is RequestResponseCycle]
    finally:
        gc.enable()
    assert len(alive) < 10, len(alive)


async def exchange(base_url: str, request: bytes, *, until: bytes, then: bytes = b"") -> bytes:
    """Send `request` on a raw connection, read until `until` has come, send `then`, and
    read until the server has answered it too (or 5 s pass)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    got = b""
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            while until not in got:
                got += await reader.read(65536)
            if then:
                writer.write(then)
                mark = len(got)
                while b"\r\n\r\n" not in got[mark:] or not got.endswith(b"}"):
                    got += await reader.read(65536)
    finally:
        writer.close()
    return got


async def test_over_a_real_server_every_answer_is_whole(base_url: str) -> None:
    # HEAD on a kept-alive connection: a head with no body, then a second request.
    got = await exchange(
        base_url,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        until=b'"redis":"ok"',
    )
    assert got.count(b"HTTP/1.1 200 OK") == 2, got
    # Expect: 100-continue: the 100 goes out before the body is sent, the answer after it.
    body = b"{}"
    got = await exchange(
        base_url,
        b"POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body),
        until=b"100 Continue\r\n\r\n",
        then=body,
    )
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), got
    assert b'"token":' in got
    # A static file, streamed: its head and whole body arrive.
    expected = CLIENT_SCRIPT.read_bytes()
    script = await exchange(
        base_url, b"GET /pushskip.js HTTP/1.1\r\nHost: x\r\n\r\n", until=expected[-200:]
    )
    head, _, content = script.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: %d" % len(expected) in head.lower()
    assert content == expected
