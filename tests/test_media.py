"""Media rooms with LiveKit, against the stand-in LiveKit server (`bench.livekit_standin`):
every match carries the user's own token for that room only; every ended match's room is
deleted once, through the outbox, also across an outage and a SIGKILL; LiveKit's webhooks
are verified and drive presence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from bench.livekit_standin import API_KEY, API_SECRET, LiveKitStandIn
from pushskip.config import ConfigError, Settings
from pushskip.embedded import EmbeddedRedis
from tests.app_backend import serve_asgi
from tests.helpers import (
    User,
    app_process,
    free_port,
    make_settings,
    new_user,
    run_server,
    snapshot,
)
from tests.test_bad_input import assert_error
from tests.test_outbox import wait_until
from tests.test_ws import recv_json, ws_url

API = "server-api-key"
KEYED = {"Authorization": f"apikey {API}"}
GRACE_S = 1.0


class StandIn:
    """The stand-in on a port of its own, which it keeps when stopped and started again."""

    def __init__(self) -> None:
        self.server = LiveKitStandIn()
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[LiveKitStandIn]:
        async with serve_asgi(self.server.app, self.port):
            yield self.server

    def env(self, **more: str) -> dict[str, str]:
        """The environment of a `pushskip serve` that uses this stand-in, and `more`."""
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            **more,
        }


def media_settings(redis_url: str, standin: StandIn, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "livekit_url": standin.url,
        "livekit_api_key": API_KEY,
        "livekit_api_secret": API_SECRET,
        "api_key": API,
        "presence_grace_s": GRACE_S,
        "presence_sweep_s": 0.1,
        "outbox_backoff_max_s": 0.5,
    }
    values.update(overrides)
    return make_settings(redis_url, **values)


@pytest.fixture
async def media_app(
    redis: Redis, redis_server: EmbeddedRedis
) -> AsyncIterator[tuple[str, httpx.AsyncClient, StandIn]]:
    standin = StandIn()
    async with (
        standin.up(),
        run_server(media_settings(redis_server.url, standin)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        yield base, http, standin


async def pair(http: httpx.AsyncClient) -> tuple[User, User, str, dict[str, Any]]:
    """Two users matched; the match as the second one's enqueue gave it."""
    a, b = await new_user(http), await new_user(http)
    assert (await a.call("enqueue"))["status"] == "waiting"
    got = await b.call("enqueue")
    return a, b, got["match"]["roomName"], got["match"]


def media_tokens(value: Any) -> list[str]:
    """Every media token anywhere inside a JSON value."""
    found: list[str] = []
    if isinstance(value, dict):
        media = value.get("media")
        if isinstance(media, dict) and isinstance(media.get("token"), str):
            found.append(media["token"])
        for item in value.values():
            found += media_tokens(item)
    elif isinstance(value, list):
        for item in value:
            found += media_tokens(item)
    return found


# --- tokens -----------------------------------------------------------------------------


async def test_every_match_a_user_is_given_carries_their_own_token_for_that_room(
    media_app: tuple[str, httpx.AsyncClient, StandIn],
) -> None:
    """The enqueue reply, status, the matched event (socket, replay, poll) and hello each
    carry a token that admits that user to that room, and nothing else: not another room,
    not as another user; no user ever sees the partner's token."""
    base, http, standin = media_app
    a, b, room, b_match = await pair(http)
    assert b_match["media"]["provider"] == "livekit"
    assert b_match["media"]["url"] == standin.url
    seen: dict[str, list[Any]] = {a.id: [], b.id: []}
    for user in (a, b):
        seen[user.id].append(await user.call("status"))
        seen[user.id].append(await user.call("events?after=0"))
        async with websockets.connect(ws_url(base, user, after=0)) as ws:
            seen[user.id].append(await recv_json(ws))  # hello
            seen[user.id].append(await recv_json(ws))  # the matched event, replayed
            await ws.send(json.dumps({"type": "enqueue", "id": "again"}))
            seen[user.id].append(await recv_json(ws))  # the reply: the match back
    seen[b.id].append(b_match)
    server = standin.server
    other = await new_user(http)
    for user in (a, b):
        tokens = media_tokens(seen[user.id])
        assert len(tokens) >= 5, seen[user.id]
        for token in tokens:
            assert server.join(token, room) == user.id
            with pytest.raises(PermissionError, match="not"):
                server.join(token, "room-someone-elses")
        partner = b if user is a else a
        assert not set(tokens) & set(media_tokens(seen[partner.id]))
    assert not media_tokens(await other.call("status"))


async def test_tokens_are_minted_in_a_child_process_and_here_while_it_is_gone() -> None:
    """Once its child is ready, LiveKit's tokens are minted there (the serving process's
    own minter is not called); with the child killed, a grant is minted here at once, and
    a new child takes over."""
    from pushskip.livekit import LiveKit

    standin = StandIn()
    provider = LiveKit(standin.url, API_KEY, API_SECRET, token_ttl_s=600)
    here: list[tuple[str, str]] = []
    mint = provider.minter.mint

    def counted(user_id: str, room: str) -> str:
        here.append((user_id, room))
        return mint(user_id, room)

    provider.minter.mint = counted  # type: ignore[method-assign]
    try:
        await provider.start()
        await wait_until(lambda: provider.minting.ready)
        grant = await provider.grant("user-a", "room-1")
        assert standin.server.join(grant["token"], "room-1") == "user-a"
        # A burst asked in one turn goes out in one write and comes back in a few: each
        # answer still finds its own caller.
        burst = await asyncio.gather(*(provider.grant(f"u{n}", f"r{n}") for n in range(40)))
        assert [standin.server.join(g["token"], f"r{n}") for n, g in enumerate(burst)] == [
            f"u{n}" for n in range(40)
        ]
        assert here == []
        first = provider.minting.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: not provider.minting.ready)
        grant = await provider.grant("user-b", "room-2")
        assert standin.server.join(grant["token"], "room-2") == "user-b"
        assert here == [("user-b", "room-2")]
        await wait_until(lambda: provider.minting.ready)
        assert provider.minting.pid not in (None, first)
        grant = await provider.grant("user-c", "room-3")
        assert standin.server.join(grant["token"], "room-3") == "user-c"
        assert here == [("user-b", "room-2")]
    finally:
        await provider.aclose()
    assert provider.minting.pid is None


async def test_without_livekit_no_match_has_media_and_the_webhook_route_is_404(
    http: httpx.AsyncClient,
) -> None:
    """LiveKit unset: no `media` anywhere, and /api/webhooks/livekit does not exist."""
    a, _b, _, match = await pair(http)
    assert "media" not in match and not media_tokens(await a.call("status"))
    response = await http.post("/api/webhooks/livekit", content=b"{}")
    assert_error(response, 404)


def test_livekit_settings_come_together() -> None:
    """LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are all set, or none."""
    with pytest.raises(ConfigError, match="together"):
        Settings.from_env({"LIVEKIT_URL": "wss://x.livekit.cloud", "LIVEKIT_API_KEY": "k"})
    with pytest.raises(ConfigError, match="LIVEKIT_URL"):
        Settings.from_env({"LIVEKIT_URL": "x.livekit.cloud"})
    settings = Settings.from_env(
        {"LIVEKIT_URL": "wss://x.livekit.cloud/", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    )
    assert settings.livekit and settings.livekit_url == "wss://x.livekit.cloud"
    assert "LIVEKIT_API_SECRET" not in repr(settings) and "'s'" not in repr(settings)


# --- rooms deleted when matches end -------------------------------------------------------


async def wait_deleted(standin: StandIn, rooms: set[str], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not rooms <= set(standin.server.deleted()):
            await asyncio.sleep(0.05)


async def test_every_kind_of_ending_deletes_the_room_once(
    media_app: tuple[str, httpx.AsyncClient, StandIn],
) -> None:
    """A skip, a leave, a vanished user, the server's end-match and a ban each delete the
    match's room, once; a room that is already gone counts as deleted."""
    _base, http, standin = media_app
    server = standin.server
    rooms: list[str] = []
    for kind in ("skip", "leave", "vanish", "end-match", "ban", "never-joined"):
        a, b, room, match = await pair(http)
        rooms.append(room)
        if kind != "never-joined":
            server.join(match["media"]["token"], room)
        if kind == "skip":
            await a.call("skip", {"requeue": False})
        elif kind == "leave":
            await b.call("leave")
        elif kind == "end-match":
            await http.post("/api/server/end-match", json={"userId": a.id}, headers=KEYED)
        elif kind == "ban":
            await http.post("/api/server/ban", json={"userId": a.id, "seconds": 5}, headers=KEYED)
        elif kind == "never-joined":
            await a.call("leave")
        # "vanish": neither makes a request again; presence ends it after the grace.
    await wait_deleted(standin, set(rooms))
    await asyncio.sleep(0.3)
    deletes = [c.room for c in server.calls if c.method == "DeleteRoom"]
    assert sorted(deletes) == sorted(rooms), deletes  # each once
    assert [c.detail for c in server.calls if c.room == rooms[-1]] == ["not_found"]
    assert server.rooms == {}


async def test_rooms_are_deleted_once_livekit_is_back_after_being_down(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """With LiveKit down for 30 s while matches end, every room is deleted once it is
    back, and none twice."""
    standin = StandIn()
    settings = media_settings(redis_server.url, standin, outbox_backoff_max_s=2.0)
    rooms: set[str] = set()
    async with (
        run_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        for _ in range(10):
            a, _b, room, match = await pair(http)
            standin.server.join(match["media"]["token"], room)
            await a.call("skip", {"requeue": False})
            rooms.add(room)
        await asyncio.sleep(30)  # LiveKit is down all this time
        async with standin.up():
            await wait_deleted(standin, rooms, timeout=30)
    assert sorted(standin.server.deleted()) == sorted(rooms)


async def test_a_process_killed_right_after_a_skip_still_gets_its_room_deleted(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The skip's process is SIGKILLed before it can delete the room: another process does."""
    standin = StandIn()
    env = standin.env(PUSHSKIP_OUTBOX_LEASE_S="2", PUSHSKIP_OUTBOX_BACKOFF_MAX_S="1")
    async with standin.up():
        with (
            app_process(redis_server.url, **env) as (url_1, proc_1),
            app_process(redis_server.url, **env) as (_url_2, _),
        ):
            standin.server.delay_s = 5.0  # process 1's own attempt would not finish in time
            async with httpx.AsyncClient(base_url=url_1, timeout=10) as http:
                a, _b, room, match = await pair(http)
                standin.server.join(match["media"]["token"], room)
                assert (await a.call("skip", {"requeue": False}))["skipped"] is True
                await asyncio.sleep(0.1)  # its deliverer has claimed the deletion
                proc_1.send_signal(signal.SIGKILL)
            standin.server.delay_s = 0.0
            await wait_deleted(standin, {room}, timeout=30)
    assert standin.server.deleted() == [room]


async def test_workers_delete_rooms_from_their_own_child_processes(
    redis_server: EmbeddedRedis,
) -> None:
    """Under `--workers`, each worker (a daemonic process) starts the child its deletions
    run in, and every ended match's room is deleted."""
    standin = StandIn()
    env = standin.env(PUSHSKIP_WORKERS="2")
    async with standin.up():
        with app_process(redis_server.url, **env) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                rooms = set()
                for _ in range(8):  # a new connection each time: both workers take some
                    http.headers["connection"] = "close"
                    a, _b, room, _match = await pair(http)
                    assert (await a.call("skip", {"requeue": False}))["skipped"] is True
                    rooms.add(room)
                await wait_deleted(standin, rooms, timeout=30)
    assert sorted(standin.server.deleted()) == sorted(rooms)


# --- LiveKit's webhooks ---------------------------------------------------------------------


async def post_webhook(
    http: httpx.AsyncClient, body: bytes, authorization: str | None
) -> httpx.Response:
    headers = {"content-type": "application/webhook+json"}
    if authorization is not None:
        headers["authorization"] = authorization
    return await http.post("/api/webhooks/livekit", content=body, headers=headers)


async def test_a_forged_or_unsigned_webhook_is_401_and_changes_nothing(
    media_app: tuple[str, httpx.AsyncClient, StandIn], redis: Redis
) -> None:
    """No Authorization, a token signed with another secret, a body that is not the one
    signed, garbage: 401, and Redis is as it was."""
    _, http, standin = media_app
    a, _, room, _ = await pair(http)
    body, token = standin.server.signed_webhook("participant_left", room, a.id)
    forger = LiveKitStandIn(api_secret="not-the-secret-but-just-as-long-0123456")
    _, forged = forger.signed_webhook("participant_left", room, a.id)
    tampered = body.replace(a.id.encode(), b"someone-else")
    before = await snapshot(redis)
    for content, auth in [
        (body, None),
        (body, forged),
        (tampered, token),
        (b"\xff\xfe not json", token),
        (body, "Bearer " + token + "x"),
    ]:
        assert_error(await post_webhook(http, content, auth), 401)
    assert await snapshot(redis) == before


async def test_participant_left_without_a_rejoin_ends_the_match_after_the_grace(
    media_app: tuple[str, httpx.AsyncClient, StandIn],
) -> None:
    """A matched user LiveKit says left the room is gone after the grace, even with their
    socket open: the partner gets partner-left (disconnected). One who rejoins in time is not."""
    base, http, standin = media_app
    a, b, room, _ = await pair(http)
    c, d, room_2, _ = await pair(http)
    async with (
        websockets.connect(ws_url(base, a)) as ws_a,
        websockets.connect(ws_url(base, b)) as ws_b,
        websockets.connect(ws_url(base, c)) as ws_c,
        websockets.connect(ws_url(base, d)) as ws_d,
    ):
        for ws in (ws_a, ws_b, ws_c, ws_d):
            await recv_json(ws)
        left = await post_webhook(
            http, *standin.server.signed_webhook("participant_left", room, a.id)
        )
        assert left.json() == {"success": True, "handled": True}
        for kind in ("participant_left", "participant_joined"):
            got = await post_webhook(http, *standin.server.signed_webhook(kind, room_2, c.id))
            assert got.status_code == 200
        # News about a room that is not the user's match changes nothing.
        stale = await post_webhook(
            http, *standin.server.signed_webhook("participant_left", "room-x", d.id)
        )
        assert stale.json() == {"success": True, "handled": False}
        event = await recv_json(ws_b, timeout=GRACE_S + 5)
        assert event["type"] == "partner-left" and event["reason"] == "disconnected"
        assert event["roomName"] == room
        await asyncio.sleep(GRACE_S + 0.5)
        assert (await c.call("status"))["state"] == "matched"
        assert (await d.call("status"))["state"] == "matched"
        # The ended match's room goes too.
        await wait_deleted(standin, {room})
