"""Races, run many times concurrently against a real server and a real Redis.

Every round fires its requests at once with asyncio.gather (with a little random
jitter, so the interleavings vary) and checks the invariant after *each* round.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from pushskip import keys, scripts
from pushskip.embedded import EmbeddedRedis
from tests.helpers import User, make_settings, new_user, run_server

# How many times each race is run.
ENQUEUE_ROUNDS = 5
ENQUEUE_USERS = 40
BOTH_SKIP_ROUNDS = 5
BOTH_SKIP_PAIRS = 10  # 50 pairs in all
SKIP_VS_ENQUEUE_ROUNDS = 5
SKIP_VS_ENQUEUE_PAIRS = 10
CHECK_DISCONNECT_ROUNDS = 5
CHECK_DISCONNECT_PAIRS = 10
CHECKS_PER_USER = 4  # concurrent check-disconnect calls per user per round
STALE_FRESH_USERS = 5  # odd, so one of them is left waiting
JITTER_S = 0.004

rng = random.Random(20240601)


async def jittered(call: Awaitable[Any]) -> Any:
    await asyncio.sleep(rng.uniform(0, JITTER_S))
    return await call


async def fresh_users(http: httpx.AsyncClient, n: int) -> list[User]:
    return list(await asyncio.gather(*(new_user(http) for _ in range(n))))


async def stored_matches(redis: Redis) -> dict[str, dict[str, Any]]:
    """Every match:{user} key, decoded, by user."""
    found: dict[str, dict[str, Any]] = {}
    async for key in redis.scan_iter(match=keys.MATCH + "*", count=1000):
        raw = await redis.get(key)
        if raw is not None:
            found[key[len(keys.MATCH) :]] = json.loads(raw)
    return found


def partner_of(match: dict[str, Any], me: str) -> str:
    return match["user2"] if match["user1"] == me else match["user1"]


def assert_matches_consistent(matches: dict[str, dict[str, Any]]) -> None:
    """Each match key names its owner, not twice, and the partner's key says the same."""
    rooms: dict[str, set[str]] = {}
    for user, m in matches.items():
        assert user in (m["user1"], m["user2"]), (user, m)
        assert m["user1"] != m["user2"], m
        partner = partner_of(m, user)
        assert partner in matches, f"{user} matched with {partner}, who has no match key"
        other = matches[partner]
        assert other["roomName"] == m["roomName"], (m, other)
        assert {other["user1"], other["user2"]} == {m["user1"], m["user2"]}
        rooms.setdefault(m["roomName"], set()).add(user)
    for room, users in rooms.items():
        assert len(users) == 2, (room, users)


async def matched_pairs(http: httpx.AsyncClient, n: int) -> list[tuple[User, User, str]]:
    """2n fresh users enqueued at once, returned as the n pairs they formed: (a, b, room)."""
    users = await fresh_users(http, 2 * n)
    await asyncio.gather(*(u.call("enqueue") for u in users))
    statuses = await asyncio.gather(*(u.call("status") for u in users))
    by_id = {u.id: u for u in users}
    pairs: list[tuple[User, User, str]] = []
    seen: set[str] = set()
    for user, st in zip(users, statuses, strict=True):
        assert st["state"] == "matched", st
        if user.id in seen:
            continue
        partner = by_id[st["match"]["partnerId"]]
        seen.update((user.id, partner.id))
        pairs.append((user, partner, st["match"]["roomName"]))
    assert len(pairs) == n
    return pairs


async def events_of(user: User) -> list[dict[str, Any]]:
    return (await user.call("events?after=0"))["events"]


# --- enqueue --------------------------------------------------------------------------


async def test_concurrent_enqueues_pair_everyone_exactly_once(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """40 users enqueueing at once form exactly 20 symmetric pairs and leave the queue empty."""
    for _ in range(ENQUEUE_ROUNDS):
        await redis.flushall()
        users = await fresh_users(http, ENQUEUE_USERS)
        replies = await asyncio.gather(*(jittered(u.call("enqueue")) for u in users))
        statuses = [r["status"] for r in replies]
        assert statuses.count("matched") == ENQUEUE_USERS // 2
        assert statuses.count("waiting") == ENQUEUE_USERS // 2

        matches = await stored_matches(redis)
        assert set(matches) == {u.id for u in users}
        assert_matches_consistent(matches)
        assert len({m["roomName"] for m in matches.values()}) == ENQUEUE_USERS // 2
        # Whoever got "matched" back was told the stored match; their partner got "waiting".
        by_id = dict(zip((u.id for u in users), replies, strict=True))
        for uid, reply in by_id.items():
            if reply["status"] == "matched":
                assert reply["match"]["roomName"] == matches[uid]["roomName"]
                assert reply["match"]["partnerId"] == partner_of(matches[uid], uid)
                assert by_id[reply["match"]["partnerId"]]["status"] == "waiting"
        assert await redis.zcard(keys.QUEUE) == 0
        assert await redis.zcard(keys.QUEUE_SEEN) == 0
        # Each user was told of exactly one match, the stored one.
        logs = await asyncio.gather(*(events_of(u) for u in users))
        for user, log in zip(users, logs, strict=True):
            assert [e["type"] for e in log] == ["matched"], log
            assert log[0]["match"]["roomName"] == matches[user.id]["roomName"]


async def test_repeated_enqueue_never_queues_twice(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """One user enqueueing many times at once is queued once and never matched with themselves."""
    for _ in range(ENQUEUE_ROUNDS):
        await redis.flushall()
        me = await new_user(http)
        replies = await asyncio.gather(*(jittered(me.call("enqueue")) for _ in range(10)))
        assert {r["status"] for r in replies} == {"waiting"}
        assert await redis.zrange(keys.QUEUE, 0, -1) == [me.id]
        other = await new_user(http)
        got = await other.call("enqueue")
        assert got["match"]["partnerId"] == me.id
        again = await asyncio.gather(*(me.call("enqueue") for _ in range(5)))
        assert {r["match"]["roomName"] for r in again} == {got["match"]["roomName"]}
        assert await redis.zcard(keys.QUEUE) == 0


# --- skip -----------------------------------------------------------------------------


async def test_both_users_skipping_at_once_end_the_match_once(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """Both users of a pair skipping at once: one skip wins, one partner-skipped, no match left."""
    for _ in range(BOTH_SKIP_ROUNDS):
        pairs = await matched_pairs(http, BOTH_SKIP_PAIRS)
        calls = []
        for a, b, _room in pairs:
            calls += [jittered(a.call("skip", {"requeue": False})),
                      jittered(b.call("skip", {"requeue": False}))]
        replies = await asyncio.gather(*calls)
        logs = await asyncio.gather(*(events_of(u) for a, b, _ in pairs for u in (a, b)))
        for i, (a, b, room) in enumerate(pairs):
            got_a, got_b = replies[2 * i], replies[2 * i + 1]
            assert [got_a["skipped"], got_b["skipped"]].count(True) == 1, (got_a, got_b)
            winner, loser = (a, b) if got_a["skipped"] else (b, a)
            won, lost = (got_a, got_b) if got_a["skipped"] else (got_b, got_a)
            assert won == {"success": True, "skipped": True, "roomName": room,
                           "status": "idle", "match": None}
            assert lost == {"success": True, "skipped": False, "message": "No active match"}
            log_a, log_b = logs[2 * i], logs[2 * i + 1]
            log_winner, log_loser = (log_a, log_b) if winner is a else (log_b, log_a)
            skipped_loser = [e for e in log_loser if e["type"] == "partner-skipped"]
            skipped_winner = [e for e in log_winner if e["type"] == "partner-skipped"]
            assert len(skipped_loser) == 1 and skipped_winner == []
            assert skipped_loser[0]["roomName"] == room
            assert skipped_loser[0]["skippedBy"] == winner.id
            assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 0
            assert await redis.zscore(keys.QUEUE, a.id) is None
            assert await redis.zscore(keys.QUEUE, b.id) is None
            assert await redis.get(keys.FORCE_DISCONNECT + loser.id) == room
            assert await redis.get(keys.FORCE_DISCONNECT + winner.id) is None
            raw_note = await redis.get(keys.SKIP_NOTIFICATION + loser.id)
            assert raw_note is not None
            note = json.loads(raw_note)
            assert note["skippedBy"] == winner.id and note["roomName"] == room
        assert await stored_matches(redis) == {}


async def test_skip_racing_partner_enqueue_never_rematches_them(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """A skip racing the partner's enqueue ends the pair for good; all match keys stay symmetric."""
    for _ in range(SKIP_VS_ENQUEUE_ROUNDS):
        await redis.flushall()
        pairs = await matched_pairs(http, SKIP_VS_ENQUEUE_PAIRS)
        calls = []
        for a, b, _room in pairs:
            calls += [jittered(a.call("skip", {"requeue": True})), jittered(b.call("enqueue"))]
        replies = await asyncio.gather(*calls)
        for i, (a, b, room) in enumerate(pairs):
            skip_reply, enqueue_reply = replies[2 * i], replies[2 * i + 1]
            assert skip_reply["skipped"] is True and skip_reply["roomName"] == room
            if skip_reply["status"] == "matched":
                assert skip_reply["match"]["partnerId"] != b.id
            if enqueue_reply["status"] == "matched":
                # Either it ran before the skip (the old room) or b found someone else.
                m = enqueue_reply["match"]
                assert m["roomName"] == room or m["partnerId"] != a.id, m
        matches = await stored_matches(redis)
        assert_matches_consistent(matches)
        for a, b, room in pairs:
            for user, other in ((a, b), (b, a)):
                if user.id in matches:
                    assert partner_of(matches[user.id], user.id) != other.id
                    assert matches[user.id]["roomName"] != room
        # Everyone asks again, at once: still never the two of a skipped pair.
        everyone = [u for a, b, _ in pairs for u in (a, b)]
        await asyncio.gather(*(jittered(u.call("enqueue")) for u in everyone))
        matches = await stored_matches(redis)
        assert_matches_consistent(matches)
        for a, b, _room in pairs:
            if a.id in matches:
                assert partner_of(matches[a.id], a.id) != b.id


STATUS_CYCLES = 60


async def test_status_is_read_at_one_moment(http: httpx.AsyncClient) -> None:
    """A status read racing matches and skips never mixes two moments: one user meets a
    new partner who then skips, again and again, so their log gains `matched` then
    `partner-skipped`; every read while that runs says matched exactly when lastSeq is odd."""
    me = await new_user(http)
    partners = await fresh_users(http, STATUS_CYCLES)
    reads: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def keep_reading() -> None:
        while not done.is_set():
            reads.append(await me.call("status"))

    readers = [asyncio.create_task(keep_reading()) for _ in range(4)]
    try:
        for partner in partners:
            await me.call("enqueue")
            await jittered(partner.call("enqueue"))
            await jittered(partner.call("skip", {"requeue": False}))
    finally:
        done.set()
        await asyncio.gather(*readers)
    types = [e["type"] for e in await events_of(me)]
    assert types == ["matched", "partner-skipped"] * STATUS_CYCLES
    seen_matched = 0
    for st in reads:
        matched = st["state"] == "matched"
        assert matched == (st["lastSeq"] % 2 == 1), st
        assert (st["match"] is not None) == matched, st
        seen_matched += matched
    # The reads did land on both sides of the race.
    assert seen_matched and len(reads) - seen_matched


async def test_concurrent_check_disconnect_never_loses_a_flag(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """Skips racing both users' check-disconnect calls: each skip is seen exactly once or kept."""
    for _ in range(CHECK_DISCONNECT_ROUNDS):
        pairs = await matched_pairs(http, CHECK_DISCONNECT_PAIRS)
        calls: list[Awaitable[Any]] = []
        for a, b, _room in pairs:
            calls.append(jittered(a.call("skip", {"requeue": False})))
            for _ in range(CHECKS_PER_USER):
                calls.append(jittered(a.call("check-disconnect")))
                calls.append(jittered(b.call("check-disconnect")))
        replies = await asyncio.gather(*calls)
        per_pair = 1 + 2 * CHECKS_PER_USER
        for i, (a, b, _room) in enumerate(pairs):
            chunk = replies[i * per_pair : (i + 1) * per_pair]
            assert chunk[0]["skipped"] is True
            checks_a, checks_b = chunk[1::2], chunk[2::2]
            # The skipped user b: force-disconnect and skip-in-progress go together.
            seen_b = [c["reason"] for c in checks_b if c["shouldDisconnect"]]
            left_b = await redis.exists(keys.FORCE_DISCONNECT + b.id)
            assert left_b == await redis.exists(keys.SKIP_IN_PROGRESS + b.id)
            assert len(seen_b) + left_b == 1, (seen_b, left_b)
            assert set(seen_b) <= {"force-disconnect"}
            # The skipper a: pre-skip and skip-in-progress go together.
            seen_a = [c["reason"] for c in checks_a if c["shouldDisconnect"]]
            left_a = await redis.exists(keys.SKIP_IN_PROGRESS + a.id)
            assert left_a == await redis.exists(keys.PRE_SKIP + a.id)
            assert len(seen_a) + left_a == 1, (seen_a, left_a)
            assert set(seen_a) <= {"skip-in-progress"}
            # A flag still there is seen by the next check, and then it is gone.
            for user, left in ((a, left_a), (b, left_b)):
                assert (await user.call("check-disconnect"))["shouldDisconnect"] is bool(left)
                assert (await user.call("check-disconnect"))["shouldDisconnect"] is False


@pytest.mark.parametrize("who", ["skipped", "skipper"])
async def test_rematch_within_flag_ttl_is_not_poisoned(
    http: httpx.AsyncClient, redis: Redis, who: str
) -> None:
    """Flags from room R1 never make the user's next room R2 look invalid or disconnected."""
    a, b, c = await fresh_users(http, 3)
    await a.call("enqueue")
    r1 = (await b.call("enqueue"))["match"]["roomName"]
    if who == "skipped":
        # a skips b; b re-enqueues and is paired with c within the flags' lifetime.
        await a.call("skip", {"requeue": False})
        assert (await b.call("enqueue"))["status"] == "waiting"
        r2 = (await c.call("enqueue"))["match"]["roomName"]
        user = b
        assert await redis.get(keys.FORCE_DISCONNECT + b.id) == r1
        assert await redis.get(keys.SKIP_IN_PROGRESS + b.id) == r1
    else:
        # a skips b with requeue and is paired at once with the waiting c.
        assert (await c.call("enqueue"))["status"] == "waiting"
        got = await a.call("skip", {"requeue": True})
        assert got["status"] == "matched" and got["match"]["partnerId"] == c.id
        r2 = got["match"]["roomName"]
        user = a
        assert await redis.get(keys.PRE_SKIP + a.id) == r1
        assert await redis.get(keys.SKIP_IN_PROGRESS + a.id) == r1
    assert r2 != r1
    assert await redis.exists(keys.ROOM_DELETED + r1) == 1

    for u in (user, c):
        valid = await u.call("check-room-valid", {"roomName": r2})
        assert (valid["valid"], valid["reason"]) == (True, None), (u, valid)
        state = await u.call("status")
        assert state["state"] == "matched" and state["match"]["roomName"] == r2
        left = await u.call("left-behind-status")
        assert left["leftBehind"] is False and left["roomName"] is None
        assert (await u.call("check-disconnect"))["shouldDisconnect"] is False
        # Consuming the stale flags does not change the verdict on R2.
        again = await u.call("check-room-valid", {"roomName": r2})
        assert again["valid"] is True
    # The old room is still reported dead.
    old = await user.call("check-room-valid", {"roomName": r1})
    assert old["valid"] is False and old["reason"] == "room-deleted"


# --- rematch cooldown -----------------------------------------------------------------


async def test_split_pair_waits_for_others_during_cooldown(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """After a skip the two wait side by side rather than re-pair; newcomers pair with them."""
    a, b = await fresh_users(http, 2)
    await a.call("enqueue")
    r1 = (await b.call("enqueue"))["match"]["roomName"]
    assert (await a.call("skip", {"requeue": True}))["status"] == "waiting"
    await asyncio.sleep(0.005)  # b queues strictly after a (queue scores are ms)
    cooldown = keys.rematch_cooldown(a.id, b.id)
    assert await redis.get(cooldown) == r1
    assert 0 < await redis.ttl(cooldown) <= 60
    for _ in range(3):  # however often they ask
        assert (await b.call("enqueue"))["status"] == "waiting"
        assert (await a.call("enqueue"))["status"] == "waiting"
    assert (await a.call("status"))["state"] == "waiting"
    assert (await b.call("status"))["state"] == "waiting"
    c, d = await fresh_users(http, 2)
    got_c = await c.call("enqueue")
    got_d = await d.call("enqueue")
    assert got_c["match"]["partnerId"] == a.id  # a has waited longest
    assert got_d["match"]["partnerId"] == b.id
    assert_matches_consistent(await stored_matches(redis))


async def test_split_pair_can_meet_again_after_cooldown(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """With a 1 s cooldown, the two are paired again once the cooldown key has expired."""
    settings = make_settings(redis_server.url, rematch_cooldown_s=1)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        a, b = await fresh_users(http, 2)
        await a.call("enqueue")
        r1 = (await b.call("enqueue"))["match"]["roomName"]
        await a.call("skip", {"requeue": True})
        assert (await b.call("enqueue"))["status"] == "waiting"
        cooldown = keys.rematch_cooldown(a.id, b.id)
        for _ in range(100):
            left_ms = await redis.pttl(cooldown)
            if left_ms < 0:  # expired
                break
            if left_ms > 300:  # surely still there while b's enqueue runs
                assert (await b.call("enqueue"))["status"] == "waiting"
            await asyncio.sleep(0.05)
        assert not await redis.exists(cooldown)
        got = await b.call("enqueue")
        assert got["status"] == "matched"
        assert got["match"]["partnerId"] == a.id and got["match"]["roomName"] != r1


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ("u_AAAAAAAAAAAAAAAA", "u_aaaaaaaaaaaaaaaa"),
        ("u_-aaaaaaaaaaaaaaa", "u__aaaaaaaaaaaaaaa"),
        ("u_Zaaaaaaaaaaaaaaa", "u_baaaaaaaaaaaaaaa"),
        ("u_0aaaaaaaaaaaaaaa", "u_-aaaaaaaaaaaaaaa"),
        ("u_aaaaaaaaaaaaaaaa", "u_aaaaaaaaaaaaaaaaa"),
    ],
)
async def test_cooldown_key_is_the_same_in_lua_and_python(redis: Redis, x: str, y: str) -> None:
    """Lua and keys.rematch_cooldown name the same key, whatever the ids' case/punctuation."""
    body = "return cooldown_key(ARGV[1], ARGV[2])"
    source = scripts.compose("test.lua", body, retention_ms=60_000).text
    for first, second in ((x, y), (y, x)):
        assert await redis.eval(source, 0, first, second) == keys.rematch_cooldown(x, y)


# --- stale queue entries --------------------------------------------------------------


async def wait_until_stale(redis: Redis, users: list[User], stale_ms: int) -> None:
    """Wait (by Redis' clock) until every user's last sign of life is older than stale_ms."""
    for _ in range(200):
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        seen = await asyncio.gather(*(redis.zscore(keys.QUEUE_SEEN, u.id) for u in users))
        if all(s is not None and now_ms - s > stale_ms + 20 for s in seen):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("users never went stale")


async def test_stale_queue_entries_never_match(redis: Redis, redis_server: EmbeddedRedis) -> None:
    """A user silent for longer than queue_stale_s is never matched; fresh ones pair up."""
    settings = make_settings(redis_server.url, queue_stale_s=1)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        silent = await new_user(http)
        assert (await silent.call("enqueue"))["status"] == "waiting"
        await wait_until_stale(redis, [silent], 1000)

        fresh = await fresh_users(http, STALE_FRESH_USERS)
        await asyncio.gather(*(jittered(u.call("enqueue")) for u in fresh))
        matches = await stored_matches(redis)
        assert silent.id not in matches
        assert_matches_consistent(matches)
        # An odd number of fresh users: one is left waiting rather than pair with `silent`.
        assert len(matches) == STALE_FRESH_USERS - 1
        assert await redis.zrange(keys.QUEUE, 0, -1) == sorted(
            {u.id for u in fresh} - set(matches)
        )
        assert (await silent.call("status"))["state"] == "idle"  # swept out of the queue


async def test_waiting_user_who_shows_life_stays_matchable(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A user waiting longer than queue_stale_s but polling status is still matched."""
    settings = make_settings(redis_server.url, queue_stale_s=1)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        alive = await new_user(http)
        assert (await alive.call("enqueue"))["status"] == "waiting"
        enqueued_ms = await redis.zscore(keys.QUEUE, alive.id)
        assert enqueued_ms is not None
        for _ in range(100):  # poll as the client does, until well past the stale time
            seconds, micros = await redis.time()
            if seconds * 1000 + micros // 1000 - enqueued_ms > 1500:
                break
            assert (await alive.call("status"))["state"] == "waiting"
            await asyncio.sleep(0.1)
        newcomer = await new_user(http)
        got = await newcomer.call("enqueue")
        assert got["status"] == "matched" and got["match"]["partnerId"] == alive.id
