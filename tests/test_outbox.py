"""The outbox: entries recorded in a Lua step are delivered at least once, by one process at
a time, a room's match.ended never before its match.created, retried with backoff, dropped
after the retry window, and bounded in memory. All against a real Redis."""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from pushskip import keys
from pushskip.metrics import Metrics
from pushskip.outbox import BACKOFF_START_S, Entry, Outbox, backoff_s
from pushskip.scripts import Script, compose

RETENTION_MS = 600_000
TARGET = "test"

_RECORD = (
    "record_outbox(ARGV[1], ARGV[2], cjson.decode(ARGV[3]), now_ms(),"
    " ARGV[4] ~= '' and ARGV[4] or nil) return 1"
)


async def record(
    redis: Redis, entry_id: str, data: dict[str, Any], after: str = "", target: str = TARGET
) -> None:
    """Record an entry with the Lua helper the matching steps use."""
    source = compose("record.lua", _RECORD, retention_ms=RETENTION_MS)
    await redis.register_script(source.text)(args=[target, entry_id, json.dumps(data), after])


class Collecting:
    """A target that keeps what it was given; it can fail chosen attempts or be slow."""

    def __init__(
        self, name: str = TARGET, concurrency: int = 8, journal: list[tuple[str, str]] | None = None
    ) -> None:
        self.name = name
        # ("start" | "ok", id) in the order they happened, shared by several targets.
        self.journal = journal if journal is not None else []
        self.concurrency = concurrency
        self.delivered: list[str] = []
        self.attempts: collections.Counter[str] = collections.Counter()
        self.fail: set[str] = set()  # ids whose attempts fail while listed
        self.fail_rate = 0.0
        self.delay_s = 0.0
        self.rng = random.Random(7)
        self.closed = False

    async def deliver(self, entry: Entry) -> bool:
        self.attempts[entry.id] += 1
        self.journal.append(("start", entry.id))
        if self.delay_s:
            await asyncio.sleep(self.rng.random() * self.delay_s)
        if entry.id in self.fail or self.rng.random() < self.fail_rate:
            return False
        self.delivered.append(entry.id)
        self.journal.append(("ok", entry.id))
        return True

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


def outbox(redis: Redis, target: Collecting, **kw: Any) -> Outbox:
    values: dict[str, Any] = {
        "retention_ms": RETENTION_MS,
        "lease_s": 30.0,
        "retry_s": 3600.0,
        "backoff_max_s": 0.05,
        "max_pending": 100_000,
    }
    values.update(kw)
    return Outbox(redis, [target], Metrics(), **values)


class Claim:
    """lua/outbox_step.lua as a claimer alone, or as a settler alone."""

    def __init__(self, redis: Redis) -> None:
        self.script = Script(redis, "outbox_step", retention_ms=RETENTION_MS)

    async def call_raw(self, target: str, limit: str, lease: str, *settled: str) -> Any:
        return await self.script.call_raw(target, limit, lease, *settled)

    async def settle(self, entry_id: str, outcome: str) -> None:
        await self.script.call_raw(TARGET, "0", "0", entry_id, outcome)


@pytest.fixture
async def claim(redis: Redis) -> AsyncIterator[Claim]:
    yield Claim(redis)


async def wait_until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def ids_of(reply: list[Any]) -> list[str]:
    """The ids a claim handed out (after the next-due figure)."""
    flat = reply[1:]
    return [str(flat[i]) for i in range(0, len(flat), 4)]


async def test_concurrent_claims_hand_each_entry_to_one_claimer(
    redis: Redis, claim: Claim
) -> None:
    """Four claimers racing over 300 entries, x10 rounds: every entry is claimed exactly once
    while its lease runs."""
    for round_ in range(10):
        await redis.flushall()
        for i in range(300):
            await record(redis, f"e{round_}-{i}", {"n": i})
        got: list[str] = []

        async def claimer(got: list[str] = got) -> None:
            while True:
                reply = await claim.call_raw(TARGET, str(random.randint(1, 25)), "60000")
                if not ids_of(reply):
                    return
                got.extend(ids_of(reply))

        await asyncio.gather(*(claimer() for _ in range(4)))
        assert sorted(got) == sorted(f"e{round_}-{i}" for i in range(300))


async def test_an_entry_is_not_claimed_before_its_predecessor_is_settled(
    redis: Redis, claim: Claim
) -> None:
    """A match.ended names its match.created: it is not claimed while the created is
    undelivered (even in the same batch), and is due at once when the created is settled."""
    await record(redis, "created", {"k": "c"})
    await record(redis, "ended", {"k": "e"}, after="created")
    first = await claim.call_raw(TARGET, "10", "60000")
    assert ids_of(first) == ["created"]
    assert ids_of(await claim.call_raw(TARGET, "10", "60000")) == []
    await claim.settle("created", "done")
    assert ids_of(await claim.call_raw(TARGET, "10", "60000")) == ["ended"]


async def test_a_claim_whose_process_died_is_claimed_again_after_the_lease(
    redis: Redis, claim: Claim
) -> None:
    """An entry claimed and never settled (its process was killed) is due again after the
    lease, with its attempt count raised; never before."""
    await record(redis, "orphan", {})
    assert ids_of(await claim.call_raw(TARGET, "10", "300")) == ["orphan"]
    blocked = await claim.call_raw(TARGET, "10", "300")
    assert ids_of(blocked) == [] and 0 < blocked[0] <= 300
    await asyncio.sleep(0.4)
    again = await claim.call_raw(TARGET, "10", "300")
    assert ids_of(again) == ["orphan"] and int(again[3]) == 2


async def test_outbox_delivers_rooms_in_order_through_failures_and_races(redis: Redis) -> None:
    """Three outboxes (three processes) deliver 150 rooms' created/ended pairs with a third of
    attempts failing and random delays: each is delivered, and no ended before its created,
    x3 rounds."""
    for round_ in range(3):
        await redis.flushall()
        journal: list[tuple[str, str]] = []
        targets = [Collecting(concurrency=4, journal=journal) for _ in range(3)]
        for t in targets:
            t.fail_rate, t.delay_s, t.rng = 0.33, 0.01, random.Random(round_ * 10 + id(t) % 7)
        boxes = [outbox(redis, t) for t in targets]
        for box in boxes:
            await box.start()
        try:
            for room in range(150):
                await record(redis, f"r{room}.created", {})
                await record(redis, f"r{room}.ended", {}, after=f"r{room}.created")
            for box in boxes:
                box.wake()

            def done(targets: list[Collecting] = targets) -> bool:
                return len({i for t in targets for i in t.delivered}) == 300

            await wait_until(done, 60)
        finally:
            for box in boxes:
                await box.stop()
        first_ok = {}
        first_start = {}
        for position, (what, entry_id) in enumerate(journal):
            (first_ok if what == "ok" else first_start).setdefault(entry_id, position)
        for room in range(150):
            created, ended = f"r{room}.created", f"r{room}.ended"
            assert first_start[ended] > first_ok[created], room
        assert await redis.hlen(keys.outbox(TARGET, "entries")) == 0
        assert await redis.zcard(keys.outbox(TARGET, "due")) == 0


async def test_ended_is_delivered_after_created_even_when_created_keeps_failing(
    redis: Redis,
) -> None:
    """While a room's match.created fails attempt after attempt, its match.ended waits; once
    the created goes through, the ended follows."""
    target = Collecting()
    target.fail.add("c")
    box = outbox(redis, target)
    await record(redis, "c", {})
    await record(redis, "e", {}, after="c")
    await box.start()
    try:
        box.wake()
        await wait_until(lambda: target.attempts["c"] >= 4)
        assert target.attempts["e"] == 0 and target.delivered == []
        target.fail.clear()
        await wait_until(lambda: len(target.delivered) == 2)
        assert target.delivered == ["c", "e"]
    finally:
        await box.stop()
    assert target.closed


async def test_an_entry_past_the_retry_window_is_dropped_and_counted(redis: Redis) -> None:
    """An entry that keeps failing is dropped once its next attempt would fall past the
    retry window; the dropped counter says so and Redis forgets it."""
    target = Collecting()
    target.fail.add("doomed")
    box = outbox(redis, target, retry_s=0.5, backoff_max_s=0.1)
    await record(redis, "doomed", {})
    await box.start()
    try:
        box.wake()
        counters = box.metrics.outbox_counters(TARGET)
        await wait_until(lambda: counters.dropped._value.get() == 1)
        assert counters.retried._value.get() >= 1
        async with asyncio.timeout(5):  # written with the deliverer's next round trip
            while await redis.hexists(keys.outbox(TARGET, "entries"), "doomed"):
                await asyncio.sleep(0.01)
    finally:
        await box.stop()


async def test_trim_bounds_the_outbox_and_reports_it(redis: Redis) -> None:
    """With no one delivering, the outbox keeps at most max_pending entries (the oldest are
    dropped) and reports its length and its oldest entry's age."""
    box = outbox(redis, Collecting(), max_pending=50)
    for i in range(80):
        await record(redis, f"x{i:03d}", {})
    await asyncio.sleep(0.05)
    await box.trim()
    counters = box.metrics.outbox_counters(TARGET)
    assert counters.dropped._value.get() == 30
    assert counters.pending._value.get() == 50
    assert counters.oldest_age._value.get() > 0
    left = await redis.zrange(keys.outbox(TARGET, "recorded"), 0, -1)
    assert sorted(left) == [f"x{i:03d}" for i in range(30, 80)]
    assert await redis.hlen(keys.outbox(TARGET, "entries")) == 50


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    """Attempt n waits between half and all of min(cap, 2^(n-1) s)."""
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (12, 300), (80, 300)]:
        for _ in range(50):
            wait = backoff_s(attempt, 300.0)
            assert ceiling / 2 <= wait <= ceiling


async def test_a_target_that_is_down_gets_one_try_per_pause_not_one_per_entry(
    redis: Redis,
) -> None:
    """With every delivery failing, after a few failures in a row the lane tries one entry
    per pause instead of every entry on its own schedule; once a try succeeds, everything
    goes out."""
    target = Collecting(concurrency=4)
    target.fail_rate = 1.0
    box = outbox(redis, target, backoff_max_s=0.2)
    for i in range(200):
        await record(redis, f"p{i:03d}", {})
    await box.start()
    try:
        box.wake()
        await asyncio.sleep(1.5)
        tried = sum(target.attempts.values())
        # The first claims (a breaker's worth of failures), then about one try per 0.2 s.
        assert tried <= 8 + 4 + 1.5 / 0.1, tried
        target.fail_rate = 0.0
        await wait_until(lambda: len(target.delivered) == 200, 30)
    finally:
        await box.stop()


async def test_failures_of_deliveries_under_way_do_not_lengthen_the_pause(
    redis: Redis,
) -> None:
    """Many deliveries failing at once (their delivering process died) open the breaker for
    one pause; only a failed try after the pause doubles it."""
    target = Collecting(concurrency=256)
    box = outbox(redis, target, backoff_max_s=300.0)
    lane = box._lanes[0]
    loop = asyncio.get_running_loop()
    for _ in range(256):  # every delivery under way fails within the same moment
        box._note(lane, False)
    assert lane.paused_until is not None
    assert lane.pause_s == BACKOFF_START_S
    assert lane.paused_until - loop.time() <= BACKOFF_START_S
    lane.paused_until = loop.time()  # the pause is over: the probe fails
    box._note(lane, False)
    assert lane.pause_s == 2 * BACKOFF_START_S
    box._note(lane, True)  # a try goes through: closed
    assert lane.paused_until is None and lane.failures == 0
