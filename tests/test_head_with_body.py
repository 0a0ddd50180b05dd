"""A response's head goes out with its body (server.HeadWithBody), and nothing is held back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

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


def cycle_on(transport: Recorder) -> Any:
    done: list[int] = []
    return SimpleNamespace(
        transport=transport, response_started=False, on_response=lambda: done.append(1), done=done
    )


def test_the_head_waits_for_the_first_body_write_only() -> None:
    sent = Recorder()
    cycle = cycle_on(sent)
    joined = HeadWithBody(cycle)
    joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts: at once
    assert sent.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    joined.write(b"HEAD\r\n\r\n")
    assert len(sent.writes) == 1
    joined.write(b"body-1")
    joined.write(b"body-2")
    assert sent.writes[1:] == [b"HEAD\r\n\r\nbody-1", b"body-2"]
    joined.response_done()
    assert cycle.done == [1] and len(sent.writes) == 3
    assert joined.get_extra_info("peername") == "info:peername"


def test_a_head_without_a_body_goes_out_when_the_response_ends_or_closes() -> None:
    for end in ("response_done", "close"):
        sent = Recorder()
        cycle = cycle_on(sent)
        joined = HeadWithBody(cycle)
        cycle.response_started = True
        joined.write(b"HEAD\r\n\r\n")
        assert sent.writes == []
        getattr(joined, end)()
        assert sent.writes == [b"HEAD\r\n\r\n"]
        assert sent.closed == (end == "close")
        assert joined.is_closing() == (end == "close")


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
