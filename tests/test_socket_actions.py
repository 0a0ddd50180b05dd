"""Actions over the socket: enqueue, skip and leave sent on the WebSocket get a reply with
the status and body the HTTP route would give, with the same effects, limits and errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from pushskip import keys
from pushskip.embedded import EmbeddedRedis
from tests.helpers import app_process, make_settings, new_user, run_server, snapshot
from tests.test_ws import assert_silent, recv_json, ws_url


async def act(ws: ClientConnection, kind: str, request_id: Any = "r1", **fields: Any) -> dict:
    """Send an action; its reply (events that arrive first are returned in `events`)."""
    await ws.send(json.dumps({"type": kind, "id": request_id, **fields}))
    events = []
    while True:
        message = await recv_json(ws)
        if message["type"] == "reply":
            message["events"] = events
            return message
        events.append(message)


async def present(redis: Redis, user_id: str) -> None:
    """Wait until the socket's process has listed the user as present (written apart from
    the request, so a snapshot taken before would see it change)."""
    for _ in range(200):
        async for key in redis.scan_iter(keys.PRESENCE_SOCKETS + "*"):
            if await redis.sismember(key, user_id):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the socket never counted as present")


async def test_enqueue_skip_leave_reply_like_http(http: httpx.AsyncClient, base_url: str) -> None:
    """Each action's reply carries the HTTP status and body, and the partner hears it."""
    a, b = await new_user(http), await new_user(http)
    async with websockets.connect(ws_url(base_url, a)) as ws_a, websockets.connect(
        ws_url(base_url, b)
    ) as ws_b:
        await recv_json(ws_a), await recv_json(ws_b)
        waiting = await act(ws_a, "enqueue", "e-1")
        assert (waiting["id"], waiting["status"], waiting["body"]) == (
            "e-1", 200, {"success": True, "status": "waiting"},
        )
        matched = await act(ws_b, "enqueue", "e-2")
        body = matched["body"]
        assert matched["status"] == 200 and body["status"] == "matched"
        assert body["match"]["partnerId"] == a.id
        # The same state over HTTP gives the same body (idempotent enqueue).
        assert (await b.call("enqueue"))["match"] == body["match"]
        assert (await recv_json(ws_a))["type"] == "matched"
        # B's own `matched` event may come before or after its reply (API.md).
        if not any(e["type"] == "matched" for e in matched["events"]):
            assert (await recv_json(ws_b))["type"] == "matched"
        skipped = await act(ws_a, "skip", "s-1", requeue=False)
        assert skipped["status"] == 200 and skipped["body"]["skipped"] is True
        assert skipped["body"]["status"] == "idle"
        event = await recv_json(ws_b)
        assert (event["type"], event["skippedBy"]) == ("partner-skipped", a.id)
        left = await act(ws_b, "leave", "l-1")
        assert (left["status"], left["body"]) == (
            200, {"success": True, "left": True, "roomName": None},
        )
        again = await act(ws_a, "skip", "s-2")
        assert again["body"] == {"success": True, "skipped": False, "message": "No active match"}
        await assert_silent(ws_a)


@pytest.mark.parametrize(
    ("message", "reply_id"),
    [
        ({"type": "skip", "id": "x", "requeue": "yes"}, "x"),
        ({"type": "skip", "id": "x", "requeue": 1}, "x"),
        ({"type": "enqueue", "id": "x", "userId": "u_someoneelse0000000"}, "x"),
        ({"type": "enqueue"}, None),
        ({"type": "enqueue", "id": 7}, None),
        ({"type": "enqueue", "id": "i" * 65}, None),
        ({"type": "enqueue", "id": ""}, None),
        ({"type": "leave", "id": "x", "note": "\ud800"}, "x"),
    ],
)
async def test_a_bad_action_gets_an_error_reply_changes_nothing_and_keeps_the_socket(
    http: httpx.AsyncClient, base_url: str, redis: Redis, message: dict, reply_id: Any
) -> None:
    """A malformed action is a 400/403 reply (with its id when it had a usable one), never a
    close, and changes nothing in Redis."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        await recv_json(ws)
        await present(redis, user.id)
        before = await snapshot(redis)
        await ws.send(json.dumps(message))
        reply = await recv_json(ws)
        assert reply["type"] == "reply" and reply["id"] == reply_id
        assert reply["status"] in (400, 403), reply
        assert reply["body"]["success"] is False and reply["body"]["error"]
        assert await snapshot(redis) == before
        assert (await act(ws, "enqueue"))["status"] == 200  # still open and working


async def test_socket_actions_share_the_per_user_rate_limit(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Past the per-user request rate, an action gets a 429 reply and does nothing."""
    settings = make_settings(redis_server.url, rate_per_s=0.1, rate_burst=2)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        user = await new_user(http)
        async with websockets.connect(ws_url(base, user)) as ws:
            await recv_json(ws)
            await present(redis, user.id)
            assert (await act(ws, "leave", "1"))["status"] == 200
            assert (await act(ws, "leave", "2"))["status"] == 200
            before = await snapshot(redis)
            limited = await act(ws, "enqueue", "3")
            assert limited["status"] == 429 and limited["body"]["success"] is False
            assert await snapshot(redis) == before
            assert await redis.zscore(keys.QUEUE, user.id) is None


async def test_skip_over_the_socket_reaches_a_partner_on_another_process(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A skip sent on a socket of process 1 reaches the partner's socket on process 2."""
    with app_process(redis_server.url) as (base_1, _), app_process(redis_server.url) as (base_2, _):
        async with httpx.AsyncClient(base_url=base_1) as http:
            a, b = await new_user(http), await new_user(http)
            async with websockets.connect(ws_url(base_1, a)) as ws_a, websockets.connect(
                ws_url(base_2, b)
            ) as ws_b:
                await recv_json(ws_a), await recv_json(ws_b)
                await act(ws_a, "enqueue")
                reply_b = await act(ws_b, "enqueue")
                assert reply_b["body"]["status"] == "matched"
                # An action's own events may come before its reply, or after it.
                if not reply_b["events"]:
                    assert (await recv_json(ws_b))["type"] == "matched"
                assert (await recv_json(ws_a))["type"] == "matched"
                reply = await act(ws_a, "skip", "s", requeue=False)
                assert reply["body"]["skipped"] is True
                event = await recv_json(ws_b, timeout=5)
                assert (event["type"], event["skippedBy"]) == ("partner-skipped", a.id)


async def test_an_action_while_redis_is_away_is_a_503_reply(own_redis: EmbeddedRedis) -> None:
    """With Redis stopped, an action gets a 503 reply and the socket stays open."""
    settings = make_settings(own_redis.url, redis_timeout_s=1.0)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        user = await new_user(http)
        async with websockets.connect(ws_url(base, user)) as ws:
            await recv_json(ws)
            own_redis.stop()
            reply = await act(ws, "enqueue", "down")
            assert reply["status"] == 503 and "Redis" in reply["body"]["error"]
            own_redis.start()
            for _ in range(50):
                reply = await act(ws, "enqueue", "up")
                if reply["status"] == 200:
                    break
                await asyncio.sleep(0.1)
            assert reply["status"] == 200 and reply["body"]["status"] == "waiting"
