"""Redis faults under open sockets: restarts with and without data, a freeze, a killed
pub/sub connection. No socket is closed; every event arrives once, in order, or after a
reset. Real Redis processes the tests stop and start, real app processes and sockets."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.client import ClientConnection

from pushskip import keys
from pushskip.embedded import EmbeddedRedis
from pushskip.events import epoch_of
from pushskip.retry import retry_read
from tests.helpers import User, app_process, make_settings, new_user, run_server
from tests.lua_events import append_events
from tests.test_ws import assert_silent, recv_json, ws_url

PAIRS = 25  # 50 sockets
# Keys kept per app process or per client address (with TTLs), not per user.
PER_PROCESS_OR_ADDRESS = ("presence:", "simple-matching:", "session-rate:", "enqueue-rate:")
OUTAGE_S = 3.0


@contextlib.contextmanager
def two_processes(redis_url: str) -> Iterator[tuple[str, str]]:
    with app_process(redis_url) as (base_1, _), app_process(redis_url) as (base_2, _):
        yield base_1, base_2


async def matched_pairs(http: httpx.AsyncClient, n: int) -> list[tuple[User, User]]:
    pairs = []
    for _ in range(n):
        a, b = await new_user(http), await new_user(http)
        assert (await a.call("enqueue"))["status"] == "waiting"
        assert (await b.call("enqueue"))["status"] == "matched"
        pairs.append((a, b))
    return pairs


@contextlib.asynccontextmanager
async def sockets_for(
    users: list[User], bases: tuple[str, str]
) -> AsyncIterator[dict[str, ClientConnection]]:
    """One socket per user, alternating between the two processes; each past its hello and
    its replayed `matched` event."""
    opened: dict[str, ClientConnection] = {}
    try:
        for i, user in enumerate(users):
            ws = await websockets.connect(ws_url(bases[i % 2], user, after=0))
            opened[user.id] = ws
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["epoch"], hello
            assert (await recv_json(ws))["type"] == "matched"
        yield opened
    finally:
        for ws in opened.values():
            await ws.close()


def still_open(sockets: dict[str, ClientConnection]) -> int:
    return sum(1 for ws in sockets.values() if ws.close_code is None)


async def next_events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` messages that are events (hellos are returned too, in place)."""
    return [await recv_json(ws, timeout=20) for _ in range(count)]


async def wait_healthy(bases: tuple[str, ...]) -> None:
    async with httpx.AsyncClient() as http:
        for base in bases:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.get(base + "/healthz")
                    if response.status_code == 200 and response.json()["hub"]:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{base} did not become healthy")


async def test_redis_restart_with_data_closes_no_socket(own_redis: EmbeddedRedis) -> None:
    """50 sockets on 2 processes, Redis stopped for 3 s and started with its data (AOF):
    no socket closes, events logged while the hubs were deaf arrive once and in order,
    and a skip afterwards reaches its partner."""
    with two_processes(own_redis.url) as bases:
        async with httpx.AsyncClient(base_url=bases[0], timeout=10) as http:
            pairs = await matched_pairs(http, PAIRS)
            users = [u for pair in pairs for u in pair]
            async with sockets_for(users, bases) as sockets:
                own_redis.stop()
                await asyncio.sleep(OUTAGE_S)
                assert still_open(sockets) == 2 * PAIRS
                own_redis.start()
                writer = Redis.from_url(own_redis.url, decode_responses=True)
                try:
                    # Logged at once: the hubs are still reconnecting (backoff).
                    for user in users:
                        assert await append_events(writer, user.id, 2) == [2, 3]
                finally:
                    await writer.aclose()
                got = await asyncio.gather(*(next_events(sockets[u.id], 2) for u in users))
                for events in got:
                    assert [(e["type"], e["seq"]) for e in events] == [("test", 2), ("test", 3)]
                await wait_healthy(bases)
                skipper, partner = pairs[0]
                await skipper.call("skip", {"requeue": False})
                event = await recv_json(sockets[partner.id], timeout=10)
                assert (event["type"], event["seq"]) == ("partner-skipped", 4)
                await asyncio.gather(*(assert_silent(ws) for ws in sockets.values()))
                assert still_open(sockets) == 2 * PAIRS


async def test_redis_restart_without_data_resets_every_socket(own_redis: EmbeddedRedis) -> None:
    """Redis restarted having lost its data: no socket closes; each gets one hello with
    reset (state idle, no epoch, seq 0) before any event of the new log, whose seqs start
    at 1 again and arrive once."""
    with two_processes(own_redis.url) as bases:
        async with httpx.AsyncClient(base_url=bases[0], timeout=10) as http:
            pairs = await matched_pairs(http, PAIRS)
            users = [u for pair in pairs for u in pair]
            async with sockets_for(users, bases) as sockets:
                own_redis.stop()
                own_redis.discard_data()
                await asyncio.sleep(OUTAGE_S)
                own_redis.start()
                resets = await asyncio.gather(*(recv_json(sockets[u.id], 20) for u in users))
                for reset in resets:
                    assert reset["type"] == "hello" and reset["reset"] is True, reset
                    assert (reset["state"], reset["lastSeq"], reset["epoch"]) == ("idle", 0, None)
                await wait_healthy(bases)
                a, b = await new_user(http), await new_user(http)
                old_a, old_b = pairs[0]
                # The old users meet again in the new log: seq 1 of a new epoch.
                assert (await old_a.call("enqueue"))["status"] == "waiting"
                assert (await old_b.call("enqueue"))["status"] == "matched"
                for user in (old_a, old_b):
                    event = await recv_json(sockets[user.id], timeout=10)
                    assert (event["type"], event["seq"]) == ("matched", 1)
                    assert event["epoch"]
                await asyncio.gather(*(assert_silent(ws) for ws in sockets.values()))
                assert still_open(sockets) == 2 * PAIRS
                del a, b


async def test_stale_epoch_over_polling_gets_the_whole_log_and_state(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """events?after=&epoch= with an epoch that is not the log's: reset, the whole current
    log and the state; with the right epoch, only what follows `after`."""
    a, b = await new_user(http), await new_user(http)
    await a.call("enqueue")
    await b.call("enqueue")
    first = await b.call("events?after=0")
    epoch = first["epoch"]
    assert epoch and [e["epoch"] for e in first["events"]] == [epoch]
    await append_events(redis, b.id, 2)
    same = await b.call(f"events?after=1&epoch={epoch}")
    assert [e["seq"] for e in same["events"]] == [2, 3] and "reset" not in same
    stale = await b.call("events?after=3&epoch=12345")
    assert stale["reset"] is True and stale["epoch"] == epoch
    assert [e["seq"] for e in stale["events"]] == [1, 2, 3]
    assert stale["state"] == "matched" and stale["match"]["partnerId"] == a.id
    # The log is lost (as when Redis loses its data): the old epoch is stale too.
    await redis.delete(keys.event_log(b.id), keys.event_seq(b.id), keys.event_epoch(b.id))
    gone = await b.call(f"events?after=3&epoch={epoch}")
    assert (gone["reset"], gone["events"], gone["lastSeq"], gone["epoch"]) == (True, [], 0, None)


@pytest.mark.parametrize("epoch", ["x" * 65, "ab-cd", "é", "1 2"])
async def test_malformed_epoch_is_400_over_http_and_1008_on_the_socket(
    http: httpx.AsyncClient, base_url: str, epoch: str
) -> None:
    """An epoch the server could not have made is a 400 (poll) or a 1008 close (socket)."""
    user = await new_user(http)
    response = await user.get("events", params={"after": "0", "epoch": epoch})
    assert response.status_code == 400 and response.json()["success"] is False
    async with websockets.connect(ws_url(base_url, user) + "&epoch=" + quote(epoch)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_socket_resuming_with_a_stale_epoch_gets_a_reset_hello(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """/ws?after=&epoch= of a gone log: hello says reset, then the whole current log."""
    user = await new_user(http)
    await append_events(redis, user.id, 3)
    epoch = (await user.call("events?after=0"))["epoch"]
    async with websockets.connect(ws_url(base_url, user, after=3) + f"&epoch={epoch}") as ws:
        hello = await recv_json(ws)
        assert "reset" not in hello and hello["epoch"] == epoch
        await assert_silent(ws)
    async with websockets.connect(ws_url(base_url, user, after=3) + "&epoch=999") as ws:
        hello = await recv_json(ws)
        assert hello["reset"] is True and hello["epoch"] == epoch and hello["lastSeq"] == 3
        assert [(await recv_json(ws))["seq"] for _ in range(3)] == [1, 2, 3]
        await assert_silent(ws)


async def roll_back(redis: Redis, user_id: str, to_seq: int) -> None:
    """The state of a replica that missed the appends after `to_seq`: same epoch, the log
    and its counter end at `to_seq`."""
    log = keys.event_log(user_id)
    kept = await redis.xrange(log, "-", f"{to_seq}-0")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(log)
        for entry_id, fields in kept:
            pipe.xadd(log, fields, id=entry_id)
        pipe.set(keys.event_seq(user_id), to_seq, keepttl=True)
        pipe.pexpire(log, 60_000)
        await pipe.execute()


async def test_counter_behind_its_stream_starts_a_new_log(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """A counter that lost its last steps while the stream kept them (partial loss) makes the
    next append start a new epoch at seq 1 instead of failing the request."""
    a, b = await new_user(http), await new_user(http)
    await append_events(redis, b.id, 5)
    old = epoch_of(await redis.get(keys.event_epoch(b.id)))
    await redis.set(keys.event_seq(b.id), 2, keepttl=True)
    await a.call("enqueue")
    assert (await b.call("enqueue"))["status"] == "matched"
    polled = await b.call("events?after=0")
    assert polled["epoch"] != old
    assert [(e["type"], e["seq"]) for e in polled["events"]] == [("matched", 1)]


async def test_log_rolled_back_under_the_same_epoch_is_a_reset(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """A log that Redis rolled back below what a client has (a failover to a replica that
    missed the last appends) is treated as lost: the open socket gets a reset hello and the
    log from seq 1, a poll with after= above the log gets a reset, and new events follow."""
    user = await new_user(http)
    async with websockets.connect(ws_url(base_url, user)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await append_events(redis, user.id, 5)
        assert [(await recv_json(ws))["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
        epoch = epoch_of(await redis.get(keys.event_epoch(user.id)))
        await roll_back(redis, user.id, to_seq=3)
        assert await redis.client_kill_filter(_type="pubsub") >= 1
        reset = await recv_json(ws, timeout=10)
        assert (reset["type"], reset.get("reset"), reset["lastSeq"]) == ("hello", True, 3)
        assert [(await recv_json(ws))["seq"] for _ in range(3)] == [1, 2, 3]
        await append_events(redis, user.id, 1)
        assert (await recv_json(ws))["seq"] == 4
        await assert_silent(ws)
    await roll_back(redis, user.id, to_seq=3)
    polled = await user.call(f"events?after=5&epoch={epoch}")
    assert polled["reset"] is True and [e["seq"] for e in polled["events"]] == [1, 2, 3]


async def test_frozen_redis_closes_no_socket(own_redis: EmbeddedRedis) -> None:
    """Redis frozen (SIGSTOP) for 3 s, then thawed: no socket closes, later events arrive."""
    settings = make_settings(own_redis.url, watchdog_interval_s=0.5)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        pairs = await matched_pairs(http, 5)
        users = [u for pair in pairs for u in pair]
        async with sockets_for(users, (base, base)) as sockets:
            assert own_redis.process is not None
            own_redis.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(OUTAGE_S)
            finally:
                own_redis.process.send_signal(signal.SIGCONT)
            assert still_open(sockets) == len(users)
            skipper, partner = pairs[0]
            await skipper.call("skip", {"requeue": False})
            event = await recv_json(sockets[partner.id], timeout=10)
            assert (event["type"], event["seq"]) == ("partner-skipped", 2)
            await asyncio.gather(*(assert_silent(ws) for ws in sockets.values()))
            assert still_open(sockets) == len(users)


async def test_killed_pubsub_under_200_sockets_loses_and_repeats_nothing(
    http: httpx.AsyncClient, base_url: str, redis: Redis
) -> None:
    """CLIENT KILL of the pub/sub connection while 200 sockets are open and events keep
    coming: none closes, each gets each of its events exactly once, in order."""
    users = [await new_user(http) for _ in range(200)]
    sockets = [await websockets.connect(ws_url(base_url, u)) for u in users]
    try:
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "hello"
        for round_ in range(3):
            assert await redis.client_kill_filter(_type="pubsub") >= 1
            for user in users:
                await append_events(redis, user.id, 1)
            got = await asyncio.gather(*(recv_json(ws, 20) for ws in sockets))
            assert [e["seq"] for e in got] == [round_ + 1] * len(users)
        await asyncio.gather(*(assert_silent(ws) for ws in sockets))
        assert all(ws.close_code is None for ws in sockets)
    finally:
        for ws in sockets:
            await ws.close()


async def test_reads_after_a_restart_do_not_fail_on_dead_pooled_connections(
    own_redis: EmbeddedRedis,
) -> None:
    """After Redis restarts, the first reads succeed (no 503) although every pooled
    connection died with the old server."""
    settings = make_settings(own_redis.url)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        users = [await new_user(http) for _ in range(20)]
        # Warm the pool: many connections at once.
        await asyncio.gather(*(u.call("status") for u in users))
        own_redis.stop()
        own_redis.start()
        statuses = await asyncio.gather(*(u.get("status") for u in users))
        assert [r.status_code for r in statuses] == [200] * len(users)
        polls = await asyncio.gather(*(u.get("events?after=0") for u in users))
        assert [r.status_code for r in polls] == [200] * len(users)


async def test_retry_read_runs_a_read_once_more_only_after_a_dead_connection() -> None:
    """A read that hit a dead connection is run once more; a second failure, a timeout or
    any other error is raised as it is."""
    calls: list[str] = []

    def failing(*errors: Exception) -> Callable[[], Awaitable[str]]:
        queue = list(errors)

        async def read() -> str:
            calls.append("read")
            if queue:
                raise queue.pop(0)
            return "value"

        return read

    assert await retry_read(failing(RedisConnectionError("gone"))) == "value"
    assert len(calls) == 2
    for errors in (
        (RedisConnectionError("gone"), RedisConnectionError("still gone")),
        (RedisTimeoutError("slow"),),
        (ResponseError("WRONGTYPE"),),
    ):
        calls.clear()
        with pytest.raises(type(errors[-1])):
            await retry_read(failing(*errors))
        assert len(calls) == len(errors)


async def test_log_keys_all_expire_after_the_retention(own_redis: EmbeddedRedis) -> None:
    """1,000 users come and go (pair, skip, leave): every key they leave has a TTL; once
    the (shortened) retention has passed, at least 95% of the keys it governs (logs,
    counters, epochs) are gone, and what is left is the seed's flags and cooldowns,
    whose TTLs (at most 300 s) API.md fixes."""
    retention_s = 2
    settings = make_settings(own_redis.url, log_retention_s=retention_s, rematch_cooldown_s=60)
    redis = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        await redis.flushall()
        async with run_server(settings) as base:
            # A pooled connection idle for uvicorn's keep-alive (5 s, httpx's default
            # expiry too) can be closed by the server as the client reuses it.
            limits = httpx.Limits(max_connections=50, keepalive_expiry=2.0)
            async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as http:
                for _ in range(10):
                    await asyncio.gather(*(come_and_go(http, i) for i in range(50)))
        fixed_ttl = (keys.FORCE_DISCONNECT, keys.ROOM_DELETED, keys.SKIP_NOTIFICATION,
                     keys.SKIP_IN_PROGRESS, keys.PRE_SKIP, keys.REMATCH_COOLDOWN)
        before = [key async for key in redis.scan_iter(count=1000)]
        governed = [
            key for key in before if not key.startswith((*fixed_ttl, *PER_PROCESS_OR_ADDRESS))
        ]
        # The earliest logs may have expired already; the latest are all still here.
        assert len(governed) >= 3 * 20, len(governed)
        for key in before:
            ttl_ms = await redis.pttl(key)  # -2: expired since the scan; -1: no TTL
            if key.startswith(PER_PROCESS_OR_ADDRESS):  # not per user
                limit_ms = max(keys.PRESENCE_KEEP_MS, keys.QUEUE_KEEP_MS)
            else:
                limit_ms = 1000 * (retention_s if key in governed else 300)
            assert ttl_ms == -2 or 0 <= ttl_ms <= limit_ms, (key, ttl_ms)
        await asyncio.sleep(retention_s + 1.5)
        left = [key async for key in redis.scan_iter(count=1000)]
        left_governed = [key for key in left if key in governed]
        assert len(left_governed) <= 0.05 * len(governed), left_governed[:5]
    finally:
        await redis.aclose()


async def come_and_go(http: httpx.AsyncClient, i: int) -> None:
    """Two users meet; one skips (or leaves), then both leave: the way most chats end."""
    a, b = await new_user(http), await new_user(http)
    await a.call("enqueue")
    await b.call("enqueue")
    await b.call("events?after=0")
    if i % 2:
        await a.call("skip", {"requeue": False})
    await a.call("leave")
    await b.call("leave")
