"""Presence: a partner who vanishes is declared gone after the grace, once; one who comes
back inside it is not. Real uvicorn (in-process and as separate processes), real Redis,
real websockets client; grace, lease and sweep shortened."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from pushskip import keys
from pushskip.config import Settings
from pushskip.embedded import EmbeddedRedis
from pushskip.scripts import Script
from tests.helpers import User, app_process, make_settings, new_user, run_server
from tests.test_ws import assert_silent, recv_json, ws_url

GRACE_S = 1.0
LEASE_S = 1.0
SWEEP_S = 0.1
RACE_ROUNDS = 50
PRESENCE_ENV = {
    "PUSHSKIP_PRESENCE_GRACE_S": str(GRACE_S),
    "PUSHSKIP_PRESENCE_LEASE_S": str(LEASE_S),
    "PUSHSKIP_PRESENCE_SWEEP_S": str(SWEEP_S),
}


def presence_settings(url: str, **overrides: Any) -> Settings:
    return make_settings(
        url, presence_grace_s=GRACE_S, presence_lease_s=LEASE_S, presence_sweep_s=SWEEP_S,
        **overrides,
    )


@contextlib.asynccontextmanager
async def server(url: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with run_server(presence_settings(url)) as base, httpx.AsyncClient(
        base_url=base, timeout=10
    ) as http:
        yield base, http


async def pair(http: httpx.AsyncClient) -> tuple[User, User, str]:
    a, b = await new_user(http), await new_user(http)
    assert (await a.call("enqueue"))["status"] == "waiting"
    matched = await b.call("enqueue")
    return a, b, matched["match"]["roomName"]


async def socket(base: str, user: User) -> ClientConnection:
    ws = await websockets.connect(ws_url(base, user))
    assert (await recv_json(ws))["type"] == "hello"
    return ws


async def test_closed_socket_ends_the_match_after_the_grace_not_before(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The only socket of a matched user closes: their partner gets partner-left with
    reason disconnected between the grace and the grace + 1.5 s; both match keys go."""
    async with server(redis_server.url) as (base, http):
        a, b, room = await pair(http)
        ws_a, ws_b = await socket(base, a), await socket(base, b)
        await asyncio.sleep(GRACE_S + 0.3)  # the enqueue's own deadline passes: a is here
        assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 2
        closed_at = time.monotonic()
        await ws_a.close()
        event = await recv_json(ws_b, timeout=GRACE_S + 5)
        elapsed = time.monotonic() - closed_at
        assert (event["type"], event["roomName"], event["reason"]) == (
            "partner-left", room, "disconnected",
        )
        print(f"socket closed -> partner-left: {elapsed:.2f} s (grace {GRACE_S} s)")
        assert GRACE_S <= elapsed <= GRACE_S + 1.5, elapsed
        assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 0
        assert await redis.get(keys.FORCE_DISCONNECT + b.id) == room
        assert await redis.exists(keys.rematch_cooldown(a.id, b.id)) == 1
        await assert_silent(ws_b)
        await ws_b.close()


async def test_reconnect_inside_the_grace_ends_nothing(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A socket closed and reopened inside the grace, on the same process and on another
    one, sends nothing and leaves the match intact."""
    async with server(redis_server.url) as (base_1, http), server(redis_server.url) as (
        base_2, _,
    ):
        a, b, _ = await pair(http)
        ws_b = await socket(base_1, b)
        ws_a = await socket(base_1, a)
        for base in (base_1, base_2, base_1):
            await ws_a.close()
            await asyncio.sleep(GRACE_S / 3)
            ws_a = await socket(base, a)
            await asyncio.sleep(GRACE_S / 3)
        await asyncio.sleep(GRACE_S + 0.5)
        await assert_silent(ws_b)
        assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 2
        await ws_a.close()
        await ws_b.close()


async def test_polling_keeps_a_user_present_and_stopping_ends_the_match(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A user with no socket who polls every 500 ms stays matched (6 graces here); once they
    stop polling they are gone after the grace."""
    async with server(redis_server.url) as (base, http):
        a, b, room = await pair(http)
        ws_b = await socket(base, b)
        deadline = time.monotonic() + 6 * GRACE_S
        while time.monotonic() < deadline:
            assert (await a.call("events?after=0"))["events"][0]["type"] == "matched"
            await asyncio.sleep(0.5)
        await assert_silent(ws_b, 0.1)
        assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 2
        stopped_at = time.monotonic()
        event = await recv_json(ws_b, timeout=GRACE_S + 5)
        assert (event["type"], event["reason"], event["roomName"]) == (
            "partner-left", "disconnected", room,
        )
        assert time.monotonic() - stopped_at <= GRACE_S + 1.5
        status = await a.call("status")
        assert status["state"] == "idle"
        await ws_b.close()


async def test_waiting_user_who_is_gone_leaves_the_queue(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A waiting user with no socket and no requests leaves the queue after the grace,
    without an event; nobody is matched with them afterwards."""
    async with server(redis_server.url) as (_, http):
        a = await new_user(http)
        await a.call("enqueue")
        assert await redis.zscore(keys.QUEUE, a.id) is not None
        await asyncio.sleep(GRACE_S + 0.8)
        assert await redis.zscore(keys.QUEUE, a.id) is None
        assert (await a.call("events?after=0"))["events"] == []
        b = await new_user(http)
        assert (await b.call("enqueue"))["status"] == "waiting"


async def test_explicit_leave_says_left(http: httpx.AsyncClient, base_url: str) -> None:
    """leave sends partner-left with reason left (not disconnected)."""
    a, b, room = await pair(http)
    await a.call("leave")
    events = (await b.call("events?after=0"))["events"]
    assert [(e["type"], e.get("reason")) for e in events] == [
        ("matched", None), ("partner-left", "left"),
    ]
    assert events[1]["roomName"] == room


async def test_beacon_leave_takes_the_token_from_a_text_body(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """leave with no Authorization header reads the token from a text/plain JSON body (a
    sendBeacon); a wrong or missing token there is 401 and changes nothing."""
    a, b, _ = await pair(http)
    for content in (b'{"token": "forged"}', b"{}", b'{"token": 7}'):
        response = await http.post(
            "/api/simple-matching/leave", content=content,
            headers={"Content-Type": "text/plain;charset=UTF-8"},
        )
        assert response.status_code in (400, 401), response.text
        assert await redis.exists(keys.match(a.id)) == 1
    response = await http.post(
        "/api/simple-matching/leave",
        content=f'{{"token": "{a.token}"}}'.encode(),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200 and response.json()["left"] is True
    events = (await b.call("events?after=0"))["events"]
    assert events[-1]["type"] == "partner-left" and events[-1]["reason"] == "left"


async def test_sigkill_of_the_socket_process_ends_the_match_from_another(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """SIGKILL of the process holding a user's only socket: another process declares them
    gone within the grace + the lease (+ slack), and the partner hears it there."""
    with app_process(redis_server.url, **PRESENCE_ENV) as (base_1, proc_1), app_process(
        redis_server.url, **PRESENCE_ENV
    ) as (base_2, _):
        async with httpx.AsyncClient(base_url=base_2, timeout=10) as http:
            a, b, room = await pair(http)
            ws_b = await socket(base_2, b)
            ws_a = await socket(base_1, a)
            await asyncio.sleep(GRACE_S + 0.3)
            killed_at = time.monotonic()
            proc_1.send_signal(signal.SIGKILL)
            proc_1.wait(5)
            event = await recv_json(ws_b, timeout=GRACE_S + LEASE_S + 10)
            elapsed = time.monotonic() - killed_at
            assert (event["type"], event["reason"], event["roomName"]) == (
                "partner-left", "disconnected", room,
            )
            print(f"SIGKILL -> partner-left: {elapsed:.2f} s (grace {GRACE_S}, lease {LEASE_S})")
            assert elapsed <= GRACE_S + LEASE_S + 1.5, elapsed
            await assert_silent(ws_b)
            await ws_b.close()
            with contextlib.suppress(Exception):
                await ws_a.close()


async def test_both_partners_vanishing_end_the_match_once(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Both users of 10 pairs close their sockets at once: every match ends once (one
    partner-left per pair, in one of the two logs), no match key is left, no error."""
    async with server(redis_server.url) as (base, http):
        pairs = [await pair(http) for _ in range(10)]
        sockets = [await socket(base, u) for a, b, _ in pairs for u in (a, b)]
        await asyncio.sleep(GRACE_S + 0.3)
        await asyncio.gather(*(ws.close() for ws in sockets))
        await asyncio.sleep(GRACE_S + 1.0)
        for a, b, room in pairs:
            assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 0
            left = [
                e
                for user in (a, b)
                for e in (await user.call("events?after=0"))["events"]
                if e["type"] == "partner-left"
            ]
            assert len(left) == 1 and left[0]["roomName"] == room, left
        assert (await http.get("/healthz")).status_code == 200


async def test_gone_against_skip_in_flight_ends_the_match_once(redis: Redis) -> None:
    """The sweep declaring a gone and the partner's skip, raced in Redis (x50): exactly one
    of partner-left (to the skipper) or partner-skipped (to the gone user) is logged."""
    enqueue = Script(redis, "enqueue", retention_ms=60_000)
    skip = Script(redis, "skip", retention_ms=60_000)
    sweep = Script(redis, "sweep", retention_ms=60_000)
    for round_ in range(RACE_ROUNDS):
        gone, skipper = f"u_gone{round_:012d}xx", f"u_skip{round_:012d}xx"
        await enqueue(gone, f"room-{round_}", "60000", "127.0.0.1", "100", "0")
        await enqueue(skipper, f"room-x{round_}", "60000", "127.0.0.1", "100", "0")
        await redis.zadd(keys.PRESENCE_DEADLINES, {gone: 0})
        calls = [
            skip(skipper, "0", "room-unused", "60000", "60", "127.0.0.1", "100", "0"),
            sweep("0", "100", "60"),
        ]
        if round_ % 2:
            calls.reverse()
        await asyncio.gather(*calls)
        logged = {
            user: [e["e"] for _, e in await redis.xrange(keys.event_log(user))]
            for user in (gone, skipper)
        }
        left = sum('"partner-left"' in e for e in logged[skipper])
        skipped = sum('"partner-skipped"' in e for e in logged[gone])
        assert left + skipped == 1, logged
        assert await redis.exists(keys.match(gone), keys.match(skipper)) == 0


async def test_idle_connected_users_cost_no_redis_commands(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """With 50 idle sockets open, the commands Redis runs per second do not grow with the
    number of sockets: the lease and the sweep are per process."""
    async with server(redis_server.url) as (base, http):
        users = [await new_user(http) for _ in range(50)]

        async def commands_per_s(seconds: float) -> float:
            before = (await redis.info("stats"))["total_commands_processed"]
            await asyncio.sleep(seconds)
            after = (await redis.info("stats"))["total_commands_processed"]
            return (after - before - 2) / seconds  # minus our own INFO calls

        await asyncio.sleep(0.5)
        without = await commands_per_s(2.0)
        sockets = [await socket(base, u) for u in users]
        await asyncio.sleep(0.5)
        with_sockets = await commands_per_s(2.0)
        # Lease and sweep (scripts: their inner calls count too) are per process.
        assert with_sockets <= without + 10, (without, with_sockets)  # 1/s per socket = +50
        for ws in sockets:
            await ws.close()


async def test_enqueue_and_skip_mark_their_user_present_in_their_own_step(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """An HTTP-only user's enqueue and skip push their presence deadline in the script
    that does the action: one script call each, no presence write of its own. A refused
    enqueue marks nothing, and the user's next request marks them."""
    settings = make_settings(
        redis_server.url,
        presence_grace_s=30.0,
        presence_lease_s=60.0,  # no lease or sweep script in the windows counted below
        presence_sweep_s=60.0,
        max_waiting_per_address=1,
    )

    async def scripts_run() -> int:
        return int((await redis.info("commandstats"))["cmdstat_evalsha"]["calls"])

    async def deadline(user: User) -> float | None:
        return await redis.zscore(keys.PRESENCE_DEADLINES, user.id)

    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        a, c, warm = await new_user(http), await new_user(http), await new_user(http)
        for action in ("enqueue", "skip", "leave"):  # each script's first call loads it
            await warm.call(action)
        await asyncio.sleep(0.3)  # the lease's first renewal is done
        before = await scripts_run()
        assert (await a.call("enqueue"))["status"] == "waiting"
        assert await scripts_run() - before == 1
        now_ms = time.time() * 1000
        first = await deadline(a)
        assert first is not None and now_ms + 25_000 < first <= now_ms + 31_000

        before = await scripts_run()
        refused = await c.post("enqueue", {})  # a waits at the same address: over the cap
        assert refused.status_code == 429
        assert await scripts_run() - before == 1
        assert await deadline(c) is None
        await c.call("status")  # the touch the refusal gave back is written now
        assert await deadline(c) is not None

        await asyncio.sleep(1.1)  # a's next touch is due
        before = await scripts_run()
        assert (await a.call("skip", {"requeue": False}))["skipped"] is False
        assert await scripts_run() - before == 1
        later = await deadline(a)
        assert later is not None and later > first


@pytest.mark.parametrize("name", ["lease", "sweep", "presence"])
def test_presence_scripts_exist(name: str) -> None:
    """The presence scripts load with the shared helpers (their source maps back)."""
    from pushskip import scripts

    source = scripts.source(name, retention_ms=60_000)
    assert source.where(len(source.text.splitlines())).startswith(f"{name}.lua:")
