"""The WebSocket: hello, replay, live events, auth and Origin, against real uvicorn and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from pushskip.embedded import EmbeddedRedis
from tests.helpers import User, make_settings, new_user, run_server

RECV_TIMEOUT_S = 5.0


def ws_url(base_url: str, user: User, after: int | None = None) -> str:
    url = base_url.replace("http://", "ws://") + f"/ws?token={user.token}"
    return url if after is None else f"{url}&after={after}"


async def recv_json(ws: ClientConnection, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await recv_json(ws) for _ in range(count)]


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing more arrives (no duplicate) within a short window."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def matched_pair(http: httpx.AsyncClient) -> tuple[User, User, str]:
    a, b = await new_user(http), await new_user(http)
    await a.call("enqueue")
    room = (await b.call("enqueue"))["match"]["roomName"]
    return a, b, room


async def test_hello_then_partner_skipped_live(http: httpx.AsyncClient, base_url: str) -> None:
    """The partner's socket gets hello, then partner-skipped pushed right after the skip."""
    a, b, room = await matched_pair(http)
    async with websockets.connect(ws_url(base_url, b)) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        assert hello["userId"] == b.id and hello["state"] == "matched"
        assert hello["match"]["roomName"] == room and hello["lastSeq"] == 1
        assert hello["pollIntervalMs"] == 500
        await a.call("skip", {"requeue": False})
        event = await recv_json(ws)
        assert event["type"] == "partner-skipped" and event["seq"] == 2
        assert event["roomName"] == room and event["skippedBy"] == a.id
        await assert_silent(ws)


async def test_replay_after_reconnect_exactly_once(http: httpx.AsyncClient, base_url: str) -> None:
    """An event missed while the socket was closed arrives on reconnect with after=, once."""
    a, b, _ = await matched_pair(http)
    async with websockets.connect(ws_url(base_url, b)) as ws:
        hello = await recv_json(ws)
    await a.call("skip", {"requeue": False})
    async with websockets.connect(ws_url(base_url, b, after=hello["lastSeq"])) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        event = await recv_json(ws)
        assert (event["type"], event["seq"]) == ("partner-skipped", 2)
        await assert_silent(ws)


async def xrange_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


async def test_a_socket_reads_the_log_only_when_it_is_behind(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """Opening a socket reads the state (with the log's last seq); the log itself only
    when the client is behind it. A fresh socket, or one resuming from the last seq, costs
    no log read; one resuming from before it gets what it missed."""
    a, b, _ = await matched_pair(http)
    await a.call("skip", {"requeue": False})  # b's log: matched (1), partner-skipped (2)
    before = await xrange_calls(redis)
    for after in (None, 2):
        async with websockets.connect(ws_url(base_url, b, after=after)) as ws:
            hello = await recv_json(ws)
            assert (hello["type"], hello["lastSeq"]) == ("hello", 2)
            await assert_silent(ws, 0.2)
    assert await xrange_calls(redis) == before
    async with websockets.connect(ws_url(base_url, b, after=1)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        event = await recv_json(ws)
        assert (event["type"], event["seq"]) == ("partner-skipped", 2)
        await assert_silent(ws, 0.2)
    assert await xrange_calls(redis) > before


async def test_two_tabs_each_get_event_once(http: httpx.AsyncClient, base_url: str) -> None:
    """Two sockets of one user on one process each receive the event exactly once."""
    a, b, _ = await matched_pair(http)
    async with websockets.connect(ws_url(base_url, b)) as t1, websockets.connect(
        ws_url(base_url, b)
    ) as t2:
        await recv_json(t1), await recv_json(t2)
        await a.call("skip", {"requeue": False})
        for tab in (t1, t2):
            assert (await recv_json(tab))["seq"] == 2
        for tab in (t1, t2):
            await assert_silent(tab)


async def test_ping_pong(http: httpx.AsyncClient, base_url: str) -> None:
    """An application-level ping is answered with pong."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        await recv_json(ws)
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


@pytest.mark.parametrize("token", ["", "garbage", "InVfeHh4eHh4eHh4eHh4eHh4eHh4eCI.aaaaaa.bbbb"])
async def test_bad_token_closes_4401(http: httpx.AsyncClient, base_url: str, token: str) -> None:
    """A missing, malformed or forged token is closed with 4401."""
    url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401


async def test_bad_origin_closes_4403(http: httpx.AsyncClient, base_url: str) -> None:
    """A browser Origin that is neither the app's own nor allowed is closed with 4403."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user), origin="http://evil.example") as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4403
    own = base_url
    async with websockets.connect(ws_url(base_url, user), origin=own) as ws:
        assert (await recv_json(ws))["type"] == "hello"


async def test_only_the_ws_path_opens_a_socket(http: httpx.AsyncClient, base_url: str) -> None:
    """/ws is handed to its endpoint ahead of Starlette's router (app.PushskipApp); any
    other path, however close, is still refused at the handshake."""
    user = await new_user(http)
    token = ws_url(base_url, user).split("?", 1)[1]
    ws_base = base_url.replace("http", "ws", 1)
    for path in ("/ws/", "/wsx", "/api/ws", "/"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{ws_base}{path}?{token}")
        assert refused.value.response.status_code == 403, path
    async with websockets.connect(f"{ws_base}/ws?{token}") as ws:
        assert (await recv_json(ws))["type"] == "hello"


async def test_one_pubsub_connection_per_process(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """Many sockets of many users share one pub/sub connection; the last socket
    of a user unsubscribes their channel."""
    users = [await new_user(http) for _ in range(20)]
    sockets = [await websockets.connect(ws_url(base_url, u)) for u in users for _ in range(2)]
    try:
        for ws in sockets:
            await recv_json(ws)
        clients = await redis.client_list(_type="pubsub")
        # Behind Sentinel (PUSHSKIP_TEST_REDIS=sentinel) the sentinels listen there too.
        clients = [c for c in clients if not c.get("name", "").startswith("sentinel-")]
        assert len(clients) == 1
        channels = set(await redis.pubsub_channels("pushskip:user:*"))
        assert channels == {f"pushskip:user:{u.id}" for u in users}
    finally:
        for ws in sockets[:20]:
            await ws.close()
    # Users 0-9 closed both tabs; users 10-19 still have one open each.
    for _ in range(100):
        channels = set(await redis.pubsub_channels("pushskip:user:*"))
        if len(channels) == 10:
            break
        await asyncio.sleep(0.02)
    assert channels == {f"pushskip:user:{u.id}" for u in users[10:]}
    for ws in sockets[20:]:
        await ws.close()


async def test_no_per_message_compression(http: httpx.AsyncClient, base_url: str) -> None:
    """The server declines permessage-deflate even when the client offers it."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user), compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await recv_json(ws)


async def test_silent_client_is_dropped_by_heartbeat(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A client that never answers the server's pings is disconnected and unsubscribed."""
    settings = make_settings(redis_server.url, ws_ping_interval_s=0.2, ws_ping_timeout_s=0.2)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        user = await new_user(http)
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws?token={user.token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        # Read (hello, pings) but never answer: the server must hang up.
        received = b""
        while chunk := await asyncio.wait_for(reader.read(4096), 10):
            received += chunk
        writer.close()
        assert b'"type":"hello"' in received.replace(b" ", b"")
        assert b"\x89" in received  # at least one ping frame was sent
        for _ in range(100):
            if not await redis.pubsub_channels(f"pushskip:user:{user.id}"):
                break
            await asyncio.sleep(0.02)
        assert await redis.pubsub_channels(f"pushskip:user:{user.id}") == []


async def test_token_never_logged(
    http: httpx.AsyncClient, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's WebSocket log lines have the token redacted."""
    caplog.set_level(logging.DEBUG)
    a, b, _ = await matched_pair(http)
    async with websockets.connect(ws_url(base_url, b)) as ws:
        await recv_json(ws)
        await a.call("skip", {"requeue": False})
        await recv_json(ws)
    # The test's own client library logs its request at DEBUG; only the server counts.
    server = [r for r in caplog.records if r.name.startswith(("uvicorn", "pushskip", "starlette"))]
    messages = [r.getMessage() for r in server]
    assert any("/ws?token=[redacted]" in m for m in messages)
    assert not any(b.token in m or a.token in m for m in messages)


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_per_socket_lines_are_logged_at_debug_only(level: str, shown: bool) -> None:
    """Under the CLI's logging, the lines uvicorn and websockets write about each socket
    ("[accepted]", "connection open/closed") show at DEBUG, not at INFO; errors always do."""
    code = (
        "import logging; from pushskip import server; "
        f"server.configure_logging({level!r}); log = server.CONNECTIONS_LOG; "
        "print(log.isEnabledFor(logging.INFO), log.isEnabledFor(logging.ERROR))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == [str(shown), "True"], done.stderr
