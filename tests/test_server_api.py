"""The server API for the app's backend: user lookup, end-match, ban / unban across
processes, stats; behind PUSHSKIP_API_KEY, with bad input refused and nothing changed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from pushskip.embedded import EmbeddedRedis
from tests.helpers import app_process, make_settings, new_user, run_server, snapshot
from tests.test_bad_input import assert_error
from tests.test_ws import matched_pair, recv_json, ws_url

API_KEY = "the-apps-server-api-key"
KEYED = {"Authorization": f"apikey {API_KEY}"}
ROUTES = [
    ("GET", "/api/server/users/someone"),
    ("POST", "/api/server/end-match"),
    ("POST", "/api/server/ban"),
    ("POST", "/api/server/unban"),
    ("GET", "/api/server/stats"),
]


@pytest.fixture
async def api(
    redis: Redis, redis_server: EmbeddedRedis
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    settings = make_settings(redis_server.url, api_key=API_KEY)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield base, http


async def closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


# --- the key ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_key_set_the_server_api_does_not_exist(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    """With PUSHSKIP_API_KEY unset every /api/server route is 404, whatever is sent."""
    response = await http.request(method, path, headers={"Authorization": "apikey anything"})
    assert_error(response, 404)


@pytest.mark.parametrize(
    "header",
    [None, "apikey wrong", f"Bearer {API_KEY}", "apikey", f"apikey {API_KEY}x", f"{API_KEY}"],
)
@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_wrong_or_missing_key_is_401_and_changes_nothing(
    api: tuple[str, httpx.AsyncClient], redis: Redis, method: str, path: str, header: str | None
) -> None:
    """Every route wants `Authorization: apikey <key>`: anything else is 401, nothing changes."""
    _, http = api
    a, _, _ = await matched_pair(http)
    before = await snapshot(redis)
    headers = {"Authorization": header} if header is not None else {}
    response = await http.request(
        method,
        path,
        headers=headers,
        json={"userId": a.id, "seconds": 60} if method == "POST" else None,
    )
    assert_error(response, 401)
    assert await snapshot(redis) == before


# --- bad input --------------------------------------------------------------------------

BAD = [
    ("end-match", b"{"),
    ("end-match", b"[]"),
    ("end-match", b"{}"),
    ("end-match", b'{"userId": 5}'),
    ("end-match", b'{"userId": ""}'),
    ("end-match", b'{"userId": "has space"}'),
    ("end-match", b'{"userId": "' + b"x" * 65 + b'"}'),
    ("end-match", b'{"userId": "\\ud800"}'),
    ("ban", b'{"userId": "@a@"}'),
    ("ban", b'{"userId": "@a@", "seconds": "60"}'),
    ("ban", b'{"userId": "@a@", "seconds": 0}'),
    ("ban", b'{"userId": "@a@", "seconds": -5}'),
    ("ban", b'{"userId": "@a@", "seconds": 1.5}'),
    ("ban", b'{"userId": "@a@", "seconds": true}'),
    ("ban", b'{"userId": "@a@", "seconds": 1e400}'),
    ("ban", b'{"userId": "@a@", "seconds": 99999999999999999999999}'),
    ("ban", b'{"seconds": 60}'),
    ("unban", b'{"userId": null}'),
    ("unban", b"\xff\xfe"),
]


@pytest.mark.parametrize(("route", "body"), BAD, ids=[f"{r}-{b[:30]!r}" for r, b in BAD])
async def test_bad_bodies_are_400_and_change_nothing(
    api: tuple[str, httpx.AsyncClient], redis: Redis, route: str, body: bytes
) -> None:
    """Malformed JSON, a missing or badly typed userId or seconds: 400, nothing changes."""
    _, http = api
    a, _, _ = await matched_pair(http)
    await http.post(
        "/api/server/ban", json={"userId": "someone-else", "seconds": 60}, headers=KEYED
    )
    before = await snapshot(redis)
    content = body.replace(b"@a@", a.id.encode())
    response = await http.post(
        f"/api/server/{route}",
        content=content,
        headers={**KEYED, "content-type": "application/json"},
    )
    assert_error(response, 400)
    assert await snapshot(redis) == before


async def test_a_huge_body_is_413_and_a_bad_user_in_the_path_is_400(
    api: tuple[str, httpx.AsyncClient], redis: Redis
) -> None:
    """Over 16 KiB: 413; /users/<id> with characters no user id has: 400."""
    _, http = api
    before = await snapshot(redis)
    huge = json.dumps({"userId": "u", "pad": "x" * 20_000})
    assert_error(await http.post("/api/server/ban", content=huge, headers=KEYED), 413)
    assert_error(await http.get("/api/server/users/" + "x" * 65, headers=KEYED), 400)
    assert_error(await http.get("/api/server/users/a%20b", headers=KEYED), 400)
    assert await snapshot(redis) == before


# --- what it does -----------------------------------------------------------------------


async def test_user_lookup_says_state_match_presence_and_ban(
    api: tuple[str, httpx.AsyncClient],
) -> None:
    """GET /api/server/users/<id>: idle / waiting / matched with the match as that user sees
    it, present while a socket is open, and bannedUntil once banned."""
    base, http = api

    async def lookup(user_id: str) -> dict[str, Any]:
        response = await http.get(f"/api/server/users/{user_id}", headers=KEYED)
        assert response.status_code == 200, response.text
        return dict(response.json())

    nobody = await lookup("never-seen")
    assert nobody == {
        "success": True,
        "userId": "never-seen",
        "state": "idle",
        "match": None,
        "present": False,
        "bannedUntil": None,
    }
    a, b, room = await matched_pair(http)
    seen = await lookup(a.id)
    assert seen["state"] == "matched" and seen["match"]["roomName"] == room
    assert seen["match"]["partnerId"] == b.id
    assert seen["present"] is True  # it just made requests
    c = await new_user(http)
    await c.call("enqueue")
    assert (await lookup(c.id))["state"] == "waiting"
    async with websockets.connect(ws_url(base, c)) as ws:
        await recv_json(ws)
        assert (await lookup(c.id))["present"] is True
    before = int(time.time() * 1000)
    await http.post("/api/server/ban", json={"userId": c.id, "seconds": 30}, headers=KEYED)
    banned = await lookup(c.id)
    assert banned["state"] == "idle"
    assert before + 29_000 <= banned["bannedUntil"] <= before + 31_000


async def test_end_match_tells_both_users_removed(api: tuple[str, httpx.AsyncClient]) -> None:
    """end-match ends the match for both; each gets partner-left with reason removed; a
    second call finds nothing to end."""
    base, http = api
    a, b, room = await matched_pair(http)
    async with (
        websockets.connect(ws_url(base, a)) as ws_a,
        websockets.connect(ws_url(base, b)) as ws_b,
    ):
        await recv_json(ws_a), await recv_json(ws_b)
        response = await http.post("/api/server/end-match", json={"userId": a.id}, headers=KEYED)
        assert response.json() == {"success": True, "ended": True, "roomName": room}
        for ws in (ws_a, ws_b):
            event = await recv_json(ws)
            assert event["type"] == "partner-left" and event["roomName"] == room
            assert event["reason"] == "removed"
    assert (await a.call("status"))["state"] == "idle"
    assert (await b.call("status"))["state"] == "idle"
    again = await http.post("/api/server/end-match", json={"userId": b.id}, headers=KEYED)
    assert again.json() == {"success": True, "ended": False, "roomName": None}


async def test_ban_closes_sockets_on_every_process_and_refuses_enqueue_until_unban(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A banned user's sockets on two processes close 4403 ("banned"), their partner gets
    partner-left (removed), their enqueue is 403 (HTTP and socket) and a new socket is
    refused, until unban."""
    env = {"PUSHSKIP_API_KEY": API_KEY}
    with (
        app_process(redis_server.url, **env) as (url_1, _),
        app_process(redis_server.url, **env) as (url_2, _),
    ):
        async with httpx.AsyncClient(base_url=url_1, timeout=10) as http:
            bad, partner, room = await matched_pair(http)
            async with (
                websockets.connect(ws_url(url_1, bad)) as on_1,
                websockets.connect(ws_url(url_2, bad)) as on_2,
                websockets.connect(ws_url(url_2, partner)) as partner_ws,
            ):
                for ws in (on_1, on_2, partner_ws):
                    assert (await recv_json(ws))["type"] == "hello"
                response = await http.post(
                    "/api/server/ban", json={"userId": bad.id, "seconds": 600}, headers=KEYED
                )
                assert response.status_code == 200 and response.json()["ended"] is True
                for ws in (on_1, on_2):
                    assert await closed_with(ws) == (4403, "banned")
                event = await recv_json(partner_ws)
                assert event["type"] == "partner-left" and event["roomName"] == room
                assert event["reason"] == "removed"
            enqueue = await bad.post("enqueue", json={})
            assert_error(enqueue, 403)
            assert (await bad.call("status"))["state"] == "idle"
            async with websockets.connect(ws_url(url_2, bad)) as refused:
                assert await closed_with(refused) == (4403, "banned")
            unban = await http.post("/api/server/unban", json={"userId": bad.id}, headers=KEYED)
            assert unban.json() == {"success": True, "unbanned": True}
            assert (await bad.call("enqueue"))["status"] in ("waiting", "matched")


async def test_a_banned_user_is_neither_enqueued_nor_requeued(
    api: tuple[str, httpx.AsyncClient],
) -> None:
    """While banned, enqueue is 403 and a skip's requeue queues nobody."""
    _, http = api
    user = await new_user(http)
    await http.post("/api/server/ban", json={"userId": user.id, "seconds": 60}, headers=KEYED)
    response = await user.post("enqueue", json={})
    assert_error(response, 403)
    skip = await user.call("skip", {"requeue": True})
    assert skip["skipped"] is False


async def test_stats_count_over_every_process(redis: Redis, redis_server: EmbeddedRedis) -> None:
    """stats: waiting and matched users, and the sockets and processes of both processes."""
    env = {"PUSHSKIP_API_KEY": API_KEY}
    with (
        app_process(redis_server.url, **env) as (url_1, _),
        app_process(redis_server.url, **env) as (url_2, _),
    ):
        async with httpx.AsyncClient(base_url=url_1, timeout=10) as http:
            a, b, _ = await matched_pair(http)
            waiting = await new_user(http)
            await waiting.call("enqueue")
            async with (
                websockets.connect(ws_url(url_1, a)) as s1,
                websockets.connect(ws_url(url_2, b)) as s2,
                websockets.connect(ws_url(url_2, waiting)) as s3,
            ):
                for ws in (s1, s2, s3):
                    await recv_json(ws)
                async with asyncio.timeout(10):
                    while True:  # the lease carries the socket counts, renewed every second
                        stats = (await http.get("/api/server/stats", headers=KEYED)).json()
                        if stats["sockets"] == 3:
                            break
                        await asyncio.sleep(0.2)
    assert stats == {"success": True, "waiting": 1, "matched": 2, "sockets": 3, "processes": 2}
