"""Push under stress and faults: bursts, several processes, Redis restarts, deaf
listeners, slow readers and shutdown. Real uvicorn, real Redis, real websockets client."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from pushskip.embedded import EmbeddedRedis
from tests.helpers import User, app_process, make_settings, new_user, run_server
from tests.lua_events import append_events
from tests.tcp_proxy import DeafeningProxy
from tests.test_ws import assert_silent, matched_pair, recv_json, ws_url

SEAM_ROUNDS = 10
SEAM_BURST = 300


async def collect_seqs(ws: websockets.ClientConnection, until: int) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < until:
        seqs.append((await recv_json(ws, timeout=10))["seq"])
    return seqs


async def test_event_crosses_processes(redis: Redis, redis_server: EmbeddedRedis) -> None:
    """A skip handled by one app process reaches the partner's socket on another."""
    with app_process(redis_server.url) as (base_1, _), app_process(redis_server.url) as (base_2, _):
        async with httpx.AsyncClient(base_url=base_1) as http_1:
            a, b, room = await matched_pair(http_1)
            async with websockets.connect(ws_url(base_2, b)) as ws_b, websockets.connect(
                ws_url(base_1, b)
            ) as ws_b_tab2:
                await recv_json(ws_b), await recv_json(ws_b_tab2)
                await a.call("skip", {"requeue": False})
                for ws in (ws_b, ws_b_tab2):
                    event = await recv_json(ws)
                    assert (event["type"], event["seq"], event["roomName"]) == (
                        "partner-skipped", 2, room,
                    )
                for ws in (ws_b, ws_b_tab2):
                    await assert_silent(ws)


async def test_replay_live_seam_under_burst(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """Tabs connecting mid-burst each get every event once, in order, with no gap at
    the seam between replay and live."""
    for _ in range(SEAM_ROUNDS):
        user = await new_user(http)
        first = await append_events(redis, user.id, SEAM_BURST // 3)
        total = len(first) + SEAM_BURST
        burst = asyncio.create_task(append_events(redis, user.id, SEAM_BURST))

        async def tab(user: User, logged: int, total: int) -> list[int]:
            async with websockets.connect(ws_url(base_url, user, after=0)) as ws:
                hello = await recv_json(ws)
                assert hello["lastSeq"] >= logged
                seqs = await collect_seqs(ws, until=total)
                await assert_silent(ws, 0.1)
                return seqs

        results = await asyncio.gather(*(tab(user, first[-1], total) for _ in range(3)))
        await burst
        for seqs in results:
            assert seqs == list(range(1, total + 1))


async def test_redis_restart_replays_what_hub_missed(own_redis: EmbeddedRedis) -> None:
    """Redis stopped and started under open sockets: events logged while the hub was
    deaf are replayed, later ones arrive live, none twice."""
    settings = make_settings(own_redis.url)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        writer = Redis.from_url(own_redis.url, decode_responses=True)
        try:
            a, b, _ = await matched_pair(http)
            async with websockets.connect(ws_url(base, b)) as ws:
                assert (await recv_json(ws))["lastSeq"] == 1
                own_redis.stop()
                down = await b.get("status")
                assert down.status_code == 503
                own_redis.start()
                # Logged before the hub is back on its feet (its backoff is running).
                await append_events(writer, b.id, 3)
                seqs = await collect_seqs(ws, until=4)
                assert seqs == [2, 3, 4]
                await a.call("skip", {"requeue": False})
                event = await recv_json(ws)
                assert (event["type"], event["seq"]) == ("partner-skipped", 5)
                await assert_silent(ws)
        finally:
            await writer.aclose()


async def test_pubsub_connection_killed_recovers(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """CLIENT KILL of the hub's pub/sub connection: it reconnects and replays the gap."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        await recv_json(ws)
        for round_ in range(3):
            killed = await redis.client_kill_filter(_type="pubsub")
            assert killed >= 1
            await append_events(redis, user.id, 2)
            seqs = await collect_seqs(ws, until=2 * (round_ + 1))
            assert seqs == [2 * round_ + 1, 2 * round_ + 2]
        await assert_silent(ws)


async def test_watchdog_recovers_silently_deaf_listener(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A pub/sub path that goes silent without closing is found by the probe and rebuilt."""
    if not isinstance(redis_server, EmbeddedRedis):
        pytest.skip("proxies the session's private server's unix socket")
    proxy = DeafeningProxy(str(redis_server.socket_path))
    await proxy.start()
    try:
        settings = make_settings(proxy.url, watchdog_interval_s=0.3)
        async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
            user = await new_user(http)
            async with websockets.connect(ws_url(base, user)) as ws:
                await recv_json(ws)
                proxy.deafen()
                await append_events(redis, user.id, 2)
                assert await collect_seqs(ws, until=2) == [1, 2]
                metrics = (await http.get("/metrics")).text
                assert "pushskip_hub_deaf_recoveries_total 1.0" in metrics
    finally:
        await proxy.close()


async def test_slow_reader_closed_1013_fast_reader_unaffected(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A socket that stops reading is closed with 1013; a fast one on the same process
    still gets every event."""
    settings = make_settings(redis_server.url, ws_send_queue=32, ws_slow_send_s=0.2)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        slow, fast = await new_user(http), await new_user(http)
        async with websockets.connect(ws_url(base, slow), max_queue=1) as ws_slow, \
                websockets.connect(ws_url(base, fast)) as ws_fast:
            await recv_json(ws_slow), await recv_json(ws_fast)
            # Big events, so the kernel's socket buffers fill and sends block.
            flood = asyncio.create_task(append_events(redis, slow.id, 5_000, kind="x" * 4096))
            await asyncio.sleep(0)
            for i in range(1, 21):
                await append_events(redis, fast.id, 1)
                assert (await recv_json(ws_fast))["seq"] == i
            await flood
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws_slow.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        metrics = (await http.get("/metrics")).text
        assert "pushskip_ws_slow_reader_closes_total 1.0" in metrics


async def test_sigterm_closes_sockets_1001(redis: Redis, redis_server: EmbeddedRedis) -> None:
    """SIGTERM to an app process closes its sockets with 1001 (go elsewhere and resume)."""
    with app_process(redis_server.url) as (base, proc):
        async with httpx.AsyncClient(base_url=base) as http:
            user = await new_user(http)
        async with websockets.connect(ws_url(base, user)) as ws:
            await recv_json(ws)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv_json(ws, timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert proc.wait(15) == 0


async def test_metrics_exposes_hub_figures(http: httpx.AsyncClient, base_url: str) -> None:
    """/metrics is Prometheus text with the hub's gauges and counters."""
    a, b, _ = await matched_pair(http)
    async with websockets.connect(ws_url(base_url, b)) as ws:
        await recv_json(ws)
        await a.call("skip", {"requeue": False})
        await recv_json(ws)
        text = (await http.get("/metrics")).text
    for line in (
        "pushskip_ws_connected_sockets 1.0",
        "pushskip_hub_subscribed_users 1.0",
        "pushskip_events_delivered_total 1.0",
        "pushskip_skip_publish_seconds_count 1.0",
    ):
        assert line in text
    assert json.dumps  # keep import used for readers extending this test
