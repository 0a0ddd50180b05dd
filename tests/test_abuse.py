"""Abuse resistance: one socket, one address or one user cannot take the service or the
queue. Real uvicorn, real Redis, real websockets client; addresses other than the test's
own are only header values behind a trusted proxy (no traffic goes anywhere else)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from starlette.requests import Request

from bench.abuse import masked_frame, raw_websocket
from pushskip import keys
from pushskip.app import create_app
from pushskip.embedded import EmbeddedRedis
from pushskip.server import PushskipServer, server_config
from pushskip.services import OPENING_AT_ONCE
from tests.helpers import (
    User,
    app_process,
    free_port,
    make_settings,
    new_user,
    run_server,
    snapshot,
)
from tests.test_ws import recv_json, ws_url

BOTS = 200
# Documentation-range addresses: only ever written into X-Forwarded-For headers.
BOT_ADDRESS = "192.0.2.66"
REAL_ADDRESSES = ("198.51.100.7", "203.0.113.9")


@contextlib.asynccontextmanager
async def server(url: str, **overrides: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with (
        run_server(make_settings(url, **overrides)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        yield base, http


async def session_from(http: httpx.AsyncClient, address: str) -> User:
    response = await http.post("/api/session", headers={"X-Forwarded-For": address})
    assert response.status_code == 200, response.text
    body = response.json()
    user = User(http, body["userId"], body["token"])
    user.headers["X-Forwarded-For"] = address
    return user


# --- sockets ---------------------------------------------------------------------------


async def test_ping_flood_is_closed_1008_and_others_keep_their_latency(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A socket sending pings as fast as it can is closed 1008 after its burst; meanwhile
    another user's skip still reaches its partner promptly."""
    async with server(redis_server.url, ws_msg_rate=10.0) as (base, http):
        flooder = await new_user(http)
        a, b = await new_user(http), await new_user(http)
        await a.call("enqueue")
        await b.call("enqueue")
        async with (
            websockets.connect(ws_url(base, flooder)) as flood,
            websockets.connect(ws_url(base, b)) as ws_b,
        ):
            await recv_json(flood)
            await recv_json(ws_b)
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(2_000):
                    await flood.send('{"type":"ping"}')
            pongs = 0
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    assert await recv_json(flood) == {"type": "pong"}
                    pongs += 1
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
            assert pongs <= 20  # answered within its burst, then closed: no 2,000 pongs
            started = time.monotonic()
            await a.call("skip", {"requeue": False})
            assert (await recv_json(ws_b))["type"] == "partner-skipped"
            assert time.monotonic() - started < 2.0
        metrics = (await http.get("/metrics")).text
        assert "pushskip_ws_rate_limited_closes_total 1.0" in metrics


async def test_pings_within_the_rate_get_pongs(http: httpx.AsyncClient, base_url: str) -> None:
    """Pings at a modest pace are each answered; the socket stays open."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        await recv_json(ws)
        for _ in range(5):
            await ws.send('{"type":"ping"}')
            assert await recv_json(ws) == {"type": "pong"}


async def test_message_over_4_kib_closes_1009(http: httpx.AsyncClient, base_url: str) -> None:
    """A client message over 4 KiB is refused by the protocol with 1009."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        await recv_json(ws)
        await ws.send("x" * 4097)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_sockets_per_user_are_capped_with_4429(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A user may hold max_sockets_per_user sockets per process; one more is closed 4429,
    and a place frees up when one closes."""
    async with server(redis_server.url, max_sockets_per_user=3) as (base, http):
        user = await new_user(http)
        sockets = [await websockets.connect(ws_url(base, user)) for _ in range(3)]
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "hello"
        async with websockets.connect(ws_url(base, user)) as extra:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv_json(extra)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4429
        await sockets.pop().close()
        await asyncio.sleep(0.1)
        async with websockets.connect(ws_url(base, user)) as again:
            assert (await recv_json(again))["type"] == "hello"
        for ws in sockets:
            await ws.close()


async def test_a_burst_of_opens_takes_turns_and_every_turn_comes_back(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Sockets open OPENING_AT_ONCE at a time, and a turn comes back however the open
    ends: after 3x that many refused opens at once (4429, over the per-user cap), 3x that
    many new users opening at once all get their hello."""
    burst = 3 * OPENING_AT_ONCE
    async with server(redis_server.url, max_sockets_per_user=1) as (base, http):
        user = await new_user(http)
        async with websockets.connect(ws_url(base, user)) as first:
            assert (await recv_json(first))["type"] == "hello"
            extra = await asyncio.gather(
                *(websockets.connect(ws_url(base, user)) for _ in range(burst))
            )
            for ws in extra:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await recv_json(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == 4429
            others = [await new_user(http) for _ in range(burst)]
            sockets = await asyncio.gather(*(websockets.connect(ws_url(base, u)) for u in others))
            try:
                hellos = await asyncio.gather(*(recv_json(ws) for ws in sockets))
                assert [h["userId"] for h in hellos] == [u.id for u in others]
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets))


# --- addresses -------------------------------------------------------------------------


async def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """With no trusted proxy, X-Forwarded-For cannot spread one client over many session
    buckets; with the peer trusted, each forwarded address has its own."""
    async with server(redis_server.url, session_rate_per_min=5) as (_, http):
        codes = [
            (
                await http.post("/api/session", headers={"X-Forwarded-For": f"192.0.2.{i}"})
            ).status_code
            for i in range(8)
        ]
        assert codes == [200] * 5 + [429] * 3
    await redis.flushall()
    async with server(redis_server.url, session_rate_per_min=5, trusted_proxies=("127.0.0.1",)) as (
        _,
        http,
    ):
        codes = [
            (
                await http.post("/api/session", headers={"X-Forwarded-For": f"192.0.2.{i}"})
            ).status_code
            for i in range(8)
        ]
        assert codes == [200] * 8


async def test_session_limit_holds_across_processes_and_writes_nothing_when_refused(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The per-address session limit is kept in Redis (two processes share it), and a
    refused mint changes nothing."""
    async with (
        server(redis_server.url, session_rate_per_min=4) as (_, one),
        server(redis_server.url, session_rate_per_min=4) as (_, two),
    ):
        codes = [(await http.post("/api/session")).status_code for http in (one, two) * 3]
        assert codes == [200] * 4 + [429] * 2
        before = await snapshot(redis)
        assert (await one.post("/api/session")).status_code == 429
        assert await snapshot(redis) == before


async def test_waiting_users_per_address_are_capped(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Past max_waiting_per_address users waiting from one address, enqueue is 429 and
    changes nothing; when one of them stops waiting, another may wait."""
    async with server(
        redis_server.url, max_waiting_per_address=2, trusted_proxies=("127.0.0.1",)
    ) as (_, http):
        users = [await session_from(http, BOT_ADDRESS) for _ in range(3)]
        # Two of the same address waiting would be paired with each other: block that.
        await redis.set(keys.rematch_cooldown(users[0].id, users[1].id), "x", ex=60)
        for user in users[:2]:
            assert (await user.call("enqueue"))["status"] == "waiting"
        before = await snapshot(redis)
        response = await users[2].post("enqueue", json={})
        assert response.status_code == 429 and response.json()["success"] is False
        assert await snapshot(redis) == before
        await users[0].call("leave")
        third = await users[2].call("enqueue")
        assert third["status"] == "matched" and third["match"]["partnerId"] == users[1].id


async def test_bot_pool_on_one_address_cannot_keep_two_real_users_apart(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """200 bot sessions from one address keep re-enqueueing (each every second or so),
    skipping whoever they get, and hold the queue; two real users from two other
    addresses, each skipping every bot it meets, meet each other within 2 s (seen on
    their sockets)."""
    env = {
        "PUSHSKIP_TRUSTED_PROXIES": "127.0.0.1",
        "PUSHSKIP_MAX_WAITING_PER_ADDRESS": "20",
        "PUSHSKIP_REMATCH_COOLDOWN_S": "60",
    }
    with app_process(redis_server.url, **env) as (base, _):
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as http:
            bots = [await session_from(http, BOT_ADDRESS) for _ in range(BOTS)]
            # The worst case: bots never take each other (they have all just met), so
            # they hold every place their address may have in the queue.
            async with redis.pipeline(transaction=False) as pipe:
                for i, x in enumerate(bots):
                    for y in bots[i + 1 :]:
                        pipe.set(keys.rematch_cooldown(x.id, y.id), "bot", ex=120)
                await pipe.execute()
            stop = asyncio.Event()
            bot_calls = 0

            async def bot(user: User) -> None:
                nonlocal bot_calls
                while not stop.is_set():
                    response = await user.post("enqueue", json={})
                    bot_calls += 1
                    if response.status_code == 200 and response.json()["status"] == "matched":
                        await user.post("skip", json={"requeue": True})
                    await asyncio.sleep(1.0)

            meetings: dict[str, list[str]] = {}

            tasks = [asyncio.create_task(bot(b)) for b in bots]
            try:
                await asyncio.sleep(2.0)
                calls_before = bot_calls
                bots_waiting = await redis.zcard(keys.QUEUE)
                a = await session_from(http, REAL_ADDRESSES[0])
                b = await session_from(http, REAL_ADDRESSES[1])
                try:
                    both = asyncio.gather(meet(base, a, b, meetings), meet(base, b, a, meetings))
                    results = await asyncio.wait_for(both, 15)
                except TimeoutError:
                    raise AssertionError(("never met", meetings)) from None
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
    # The bots were at it, and held the queue when the real users came.
    assert calls_before > 100 and bots_waiting == 20, (calls_before, bots_waiting)
    times = [elapsed for elapsed, _ in results]
    print(
        f"bot pool: real users met each other after {times} s; bots met first: "
        f"{[len(met) - 1 for _, met in results]}"
    )
    assert max(times) <= 2.0, results


# --- malformed input and misbehaving clients --------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"roomName": "\\ud800"}',
        b'{"roomName": "ok", "userId": "\\udfff"}',
        b'{"roomName": "ok", "x": ["\\ud83d"]}',
        b'{"\\ud800": 1, "roomName": "ok"}',
    ],
)
async def test_lone_surrogates_are_400_and_change_nothing(
    http: httpx.AsyncClient, redis: Redis, body: bytes
) -> None:
    """A JSON string that is not valid Unicode (a lone surrogate) anywhere in a body is a
    400, never a 500, and changes nothing."""
    user = await new_user(http)
    before = await snapshot(redis)
    response = await user.post("check-room-valid", content=body)
    assert response.status_code == 400, response.text
    assert "Unicode" in response.json()["error"]
    assert await snapshot(redis) == before


async def test_slow_headers_are_dropped_after_the_header_timeout(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A client that sends its request headers slower than header_timeout_s is dropped;
    an idle connection that sent nothing too."""
    async with server(redis_server.url, header_timeout_s=0.5) as (base, _):
        host, port = urlsplit(base).hostname, urlsplit(base).port
        assert host and port
        for partial in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(partial)
            await writer.drain()
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert 0.3 <= time.monotonic() - started <= 3.0
            writer.close()
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_client_dropping_its_upload_is_no_server_error(
    redis: Redis, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes mid-body is logged at debug, with no traceback and no 500."""
    caplog.set_level(logging.DEBUG)
    async with server(redis_server.url) as (base, http):
        user = await new_user(http)
        host, port = urlsplit(base).hostname, urlsplit(base).port
        assert host and port
        with socket.create_connection((host, port)) as raw:
            raw.sendall(
                b"POST /api/simple-matching/enqueue HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + user.token.encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": '
            )
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
        assert (await http.get("/healthz")).status_code == 200
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]
    assert any("client left" in r.getMessage() for r in caplog.records)


async def test_session_verifier_can_refuse_a_session(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """create_app(session_verifier=...) is asked before a session is minted; False is a 403
    that counts nothing against the address."""

    async def verifier(request: Request) -> bool:
        return request.headers.get("x-captcha") == "solved"

    settings = make_settings(redis_server.url)
    app = create_app(settings, session_verifier=verifier)
    port = free_port()
    server_ = PushskipServer(server_config(app, settings, host="127.0.0.1", port=port))
    server_.config.install_signal_handlers = False  # type: ignore[attr-defined]
    task = asyncio.create_task(server_.serve())
    try:
        while not server_.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            refused = await http.post("/api/session")
            assert refused.status_code == 403 and refused.json()["success"] is False
            assert await redis.keys(keys.SESSION_RATE + "*") == []
            ok = await http.post("/api/session", headers={"X-Captcha": "solved"})
            assert ok.status_code == 200 and ok.json()["token"]
    finally:
        server_.should_exit = True
        await task


# --- second round: churning sessions, and sockets that flood without reading ---------------


def raw_socket_to(base: str, token: str) -> socket.socket:
    """A WebSocket opened by hand, its 101 read and not a byte further (bench.abuse)."""
    sock, answer = raw_websocket(base, token)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def flood_until_dropped(sock: socket.socket, chunk: bytes, limit_bytes: int) -> int:
    """Send `chunk` over and over until the server drops the connection (or `limit_bytes`
    went out); the bytes sent."""
    sent = 0
    sock.settimeout(10)
    try:
        while sent < limit_bytes:
            sent += sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    return sent


async def test_a_never_reading_ping_flooder_is_dropped_and_no_longer_read(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A socket that floods pings and never reads: once the server has decided to close it
    (over its message rate) it reads no more of the flood and drops the connection soon,
    instead of parsing what keeps coming (uvicorn alone reads on for 10 s)."""
    async with server(redis_server.url, ws_msg_rate=10.0) as (base, http):
        user = await new_user(http)
        sock = await asyncio.to_thread(raw_socket_to, base, user.token)
        chunk = masked_frame(b'{"type":"ping"}') * 4096
        started = time.monotonic()
        sent = await asyncio.to_thread(flood_until_dropped, sock, chunk, 512 * 1024 * 1024)
        elapsed = time.monotonic() - started
        metrics = (await http.get("/metrics")).text
    # What fits in the sockets' buffers and the grace after the close, not a flood's worth.
    assert sent < 64 * 1024 * 1024, sent
    assert elapsed < 10, elapsed
    assert "pushskip_ws_rate_limited_closes_total 1.0" in metrics
    print(f"never-reading flooder: dropped after {elapsed:.2f} s, {sent / 1e6:.1f} MB sent")


async def test_a_never_reading_socket_over_the_frame_limit_is_dropped(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A frame over 4 KiB from a client that never reads: the connection is dropped soon
    after the 1009, however much the client goes on sending."""
    async with server(redis_server.url) as (base, http):
        user = await new_user(http)
        sock = await asyncio.to_thread(raw_socket_to, base, user.token)
        header = bytes([0x81, 0xFF]) + (16 * 1024 * 1024).to_bytes(8, "big") + b"\x00" * 4
        sock.sendall(header)
        started = time.monotonic()
        sent = await asyncio.to_thread(flood_until_dropped, sock, b"\x00" * 65536, 16 * 1024 * 1024)
        elapsed = time.monotonic() - started
    assert sent < 16 * 1024 * 1024 and elapsed < 10, (sent, elapsed)


async def test_an_address_that_churns_sessions_gets_429s_and_cannot_catch_real_users(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """200 sessions from one address re-enqueue as fast as they can and leave whenever two
    of them meet; two real users from two other addresses, each skipping every bot it meets,
    meet each other within 2 s, in each of 5 runs (median within 1 s); the attacker's
    address gets 429s."""
    env = {
        "PUSHSKIP_TRUSTED_PROXIES": "127.0.0.1",
        "PUSHSKIP_MAX_WAITING_PER_ADDRESS": "20",
        "PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS": "100",
        "PUSHSKIP_REMATCH_COOLDOWN_S": "60",
    }
    with app_process(redis_server.url, **env) as (base, _):
        # The attacker in a process of its own: its load must not slow the real users' clients.
        argv = [sys.executable, "-m", "bench.churn", "--base", base, "--address", BOT_ADDRESS]
        churner = await asyncio.create_subprocess_exec(
            *argv, "--sessions", str(BOTS), "--seconds", "120", stdout=subprocess.PIPE
        )
        times: list[float] = []
        try:
            async with httpx.AsyncClient(base_url=base, timeout=20) as http:
                await asyncio.sleep(3.0)  # sessions made, the churn under way
                for run in range(5):
                    a = await session_from(http, REAL_ADDRESSES[0])
                    b = await session_from(http, REAL_ADDRESSES[1])
                    meetings: dict[str, list[str]] = {}
                    try:
                        results = await asyncio.wait_for(
                            asyncio.gather(meet(base, a, b, meetings), meet(base, b, a, meetings)),
                            15,
                        )
                    except TimeoutError:
                        raise AssertionError(("never met", run, meetings)) from None
                    times.append(max(elapsed for elapsed, _ in results))
                    await a.call("leave")
                    await b.call("leave")
        finally:
            churner.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(churner.communicate(), 30)
    counts = json.loads(out.decode().strip().splitlines()[-1])
    times.sort()
    print(
        f"churning bots ({counts['enqueues_per_s']} enqueues/s, {counts['answered_429']} "
        f"answered 429, {counts['held_others']} real users held): real users met after "
        f"{[round(t, 2) for t in times]} s"
    )
    assert counts["answered_429"] > 0 and counts["bot_meetings"] > 0, counts
    assert max(times) <= 2.0 and times[2] <= 1.0, times


async def meet(
    base: str, user: User, other: User, meetings: dict[str, list[str]]
) -> tuple[float, list[str]]:
    """`user` looks for `other`, skipping everyone else it is matched with (seen on its socket);
    how long it took, and whom it met."""
    met = meetings[user.id] = []
    async with websockets.connect(ws_url(base, user)) as ws:
        await recv_json(ws)
        started = time.monotonic()
        await user.call("enqueue")
        while True:
            event = await recv_json(ws, timeout=10)
            if event["type"] in ("partner-skipped", "partner-left"):
                await user.call("enqueue")  # as the bundled client does
            if event["type"] != "matched":
                continue
            partner = event["match"]["partnerId"]
            met.append(partner)
            if partner == other.id:
                return time.monotonic() - started, met
            await user.call("skip", {"requeue": True})


async def test_a_user_alone_at_an_address_always_queues_at_now(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """However often a lone user comes back, their place is now; an address that queued many
    users in the last seconds queues its next one further back, and that decays."""
    async with server(redis_server.url, trusted_proxies=("127.0.0.1",)) as (_, http):
        lone = await session_from(http, REAL_ADDRESSES[0])
        for _ in range(30):
            await lone.call("enqueue")
            place = await redis.zscore(keys.QUEUE, lone.id)
            assert place is not None and abs(place - time.time() * 1000) < 500
            await lone.call("leave")
        crowd = [await session_from(http, BOT_ADDRESS) for _ in range(6)]
        for user in crowd[:5]:
            await user.call("enqueue")
            await user.call("leave")
        await crowd[5].call("enqueue")
        place = await redis.zscore(keys.QUEUE, crowd[5].id)
        assert place is not None and place - time.time() * 1000 > 5 * keys.FAIR_SLOT_MS - 500
        assert await redis.zcard(keys.RECENT_FROM + BOT_ADDRESS) == 6
        assert 0 < await redis.pttl(keys.RECENT_FROM + BOT_ADDRESS) <= keys.LIMITS_KEEP_MS


async def test_the_enqueue_rate_holds_across_processes_and_a_refused_enqueue_writes_nothing(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS counts one address's enqueues over every process:
    past it, 429 with nothing written; another address is not affected."""
    env = {"PUSHSKIP_TRUSTED_PROXIES": "127.0.0.1", "PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS": "5"}
    with (
        app_process(redis_server.url, **env) as (url_1, _),
        app_process(redis_server.url, **env) as (url_2, _),
    ):
        async with (
            httpx.AsyncClient(base_url=url_1, timeout=10) as h1,
            httpx.AsyncClient(base_url=url_2, timeout=10) as h2,
        ):
            users = [await session_from(h, BOT_ADDRESS) for h in (h1, h2) for _ in range(4)]
            statuses = [(await u.post("enqueue", json={})).status_code for u in users]
            assert statuses.count(200) == 5 and statuses.count(429) == 3, statuses
            refused = users[statuses.index(429)]
            before = await snapshot(redis)
            again = await refused.post("enqueue", json={})
            assert again.status_code == 429
            assert "slow down" in again.json()["error"]
            assert await snapshot(redis) == before
            other = await session_from(h2, REAL_ADDRESSES[0])
            assert (await other.post("enqueue", json={})).status_code == 200


async def test_concurrent_enqueues_from_one_address_never_overdraw_its_allowance(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Forty enqueues from one address at once, x5 rounds (each after the allowance has
    refilled): the allowance (10) goes through, plus what refilled while they came in (10 a
    second), never more; and the 429s wrote nothing of theirs (no queue entry, no
    recent-activity entry)."""
    async with server(
        redis_server.url, trusted_proxies=("127.0.0.1",), enqueue_rate_per_address=10.0
    ) as (_, http):
        for _ in range(5):
            await redis.flushall()
            users = [await session_from(http, BOT_ADDRESS) for _ in range(40)]
            # Nobody pairs: every user is in cooldown with every other.
            async with redis.pipeline(transaction=False) as pipe:
                for i, x in enumerate(users):
                    for y in users[i + 1 :]:
                        pipe.set(keys.rematch_cooldown(x.id, y.id), "x", ex=60)
                await pipe.execute()
            started = time.monotonic()
            responses = await asyncio.gather(*(u.post("enqueue", json={}) for u in users))
            refilled = int((time.monotonic() - started) * 10) + 1
            ok = [u.id for u, r in zip(users, responses, strict=True) if r.status_code == 200]
            assert 10 <= len(ok) <= 10 + refilled, ([r.status_code for r in responses], refilled)
            assert all(r.status_code in (200, 429) for r in responses)
            assert set(await redis.zrange(keys.QUEUE, 0, -1)) == set(ok)
            assert set(await redis.zrange(keys.RECENT_FROM + BOT_ADDRESS, 0, -1)) == set(ok)
