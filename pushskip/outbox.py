"""The outbox: work that must follow an atomic Redis step, delivered at least once by any
process, never on the path of a skip, its push or its reply.

The Lua step that makes a change records what must follow it (a webhook, a
media room to delete) as an entry of a *target*'s outbox, in the same step
(`lua/lib.lua: record_outbox`), so a process that dies right after the step
loses nothing. Each entry has a stable id (the webhook's `webhook-id`), so a
receiver can drop repeats.

Delivery (this module), per target, in every process that has the target:
- `lua/outbox_step.lua` claims due entries: a claimed entry is not due again
  for `lease_s`, so one process at a time delivers it; a process that dies
  mid-delivery leaves it to be claimed again after the lease. The same round
  trip writes the outcomes of the deliveries finished since the last one.
- An entry may name a predecessor (a room's `match.ended` names its
  `match.created`); it is not claimed before the predecessor is settled.
- A failed attempt is due again after an exponential backoff (full jitter,
  capped at `backoff_max_s`); an entry not delivered `retry_s` after it was
  recorded is dropped and counted.
- `lua/outbox_trim.lua`, every few seconds, drops what is past the retry
  window or beyond `max_pending` entries (a receiver down for long costs
  bounded memory) and reports the outbox's length and oldest entry.

A process that records entries wakes its own deliverer (`wake()`, coalesced
over a few milliseconds so a burst of skips, or of finished deliveries, costs
one round trip); the others find them by polling every `POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import RedisError

from pushskip.metrics import Metrics
from pushskip.redisform import Commands
from pushskip.scripts import Script
from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.outbox")

POLL_S = 1.0
# A wake-up waits this long, so the entries of a burst go out in one claim and the
# delivery's own work starts after the request that recorded them has been answered.
WAKE_DELAY_S = 0.02
TRIM_EVERY_S = 2.0
BACKOFF_START_S = 1.0
REDIS_RETRY_S = 1.0
# After this many failed deliveries in a row the target counts as down: the lane stops
# claiming, and tries one entry after a pause (doubling, up to backoff_max_s) until one
# goes through. A receiver that is down then costs one attempt per pause, not one per entry.
BREAKER_FAILURES = 8


class Entry:
    """One claimed entry: its id, what it carries, which attempt this is, when recorded."""

    __slots__ = ("attempt", "data", "id", "recorded_ms")

    def __init__(self, entry_id: str, data: dict[str, Any], attempt: int, recorded_ms: int):
        self.id = entry_id
        self.data = data
        self.attempt = attempt
        self.recorded_ms = recorded_ms

    def __repr__(self) -> str:
        return f"Entry({self.id!r}, attempt={self.attempt})"


class Target(Protocol):
    """Where one kind of entry goes (webhooks.WebhookTarget, a media provider...)."""

    name: str
    # Entries one process delivers at once.
    concurrency: int

    async def start(self) -> None:
        """Get ready to deliver (called once, before the first claim)."""

    async def deliver(self, entry: Entry) -> bool:
        """Deliver one entry; True when done (the receiver took it, or it needs nothing
        more), False to try again later. Must not raise for a receiver's failure."""

    async def aclose(self) -> None:
        """Release the target's connections."""


def backoff_s(attempt: int, cap_s: float) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): between half and all of
    min(cap, 1 s * 2^(attempt-1)), at random, so retries of many entries spread out."""
    ceiling = min(cap_s, BACKOFF_START_S * 2 ** min(attempt - 1, 30))
    return ceiling * (0.5 + random.random() / 2)


class _Lane:
    """One target's deliverer in this process: its deliveries under way, and the outcomes
    not yet written to Redis (sent with the next claim, in the same round trip)."""

    __slots__ = (
        "failures",
        "inflight",
        "pause_s",
        "paused_until",
        "poked",
        "settled",
        "target",
        "wake",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self.wake = asyncio.Event()
        self.poked = False
        self.inflight: set[asyncio.Task[None]] = set()
        self.settled: list[str] = []  # id, outcome, id, outcome, ...
        # The breaker (BREAKER_FAILURES): failures in a row, and while it is open, until
        # when (loop time) the lane claims nothing, and how long the next pause is.
        self.failures = 0
        self.paused_until: float | None = None
        self.pause_s = BACKOFF_START_S

    def capacity(self, now: float) -> int:
        """How many entries the lane may claim now: none while paused, one probe after a
        pause (while nothing else is under way), else what its concurrency leaves."""
        if self.paused_until is None:
            return self.target.concurrency - len(self.inflight)
        if now < self.paused_until or self.inflight:
            return 0
        return 1


class Outbox:
    def __init__(
        self,
        redis: Commands,
        targets: Sequence[Target],
        metrics: Metrics,
        *,
        retention_ms: int,
        lease_s: float,
        retry_s: float,
        backoff_max_s: float,
        max_pending: int,
    ) -> None:
        self.redis = redis
        self.targets = list(targets)
        self.metrics = metrics
        self.lease_ms = int(lease_s * 1000)
        self.retry_ms = int(retry_s * 1000)
        self.backoff_max_s = backoff_max_s
        self.max_pending = max_pending
        self._step = Script(redis, "outbox_step", retention_ms=retention_ms)
        self._trim = Script(redis, "outbox_trim", retention_ms=retention_ms)
        self._lanes = [_Lane(t) for t in self.targets]
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Outbox(targets={[t.name for t in self.targets]})"

    @property
    def names(self) -> frozenset[str]:
        """The targets whose entries the Lua steps record."""
        return frozenset(t.name for t in self.targets)

    def wake(self) -> None:
        """Entries were recorded by this process: claim them soon (coalesced)."""
        for lane in self._lanes:
            self._poke(lane)

    def _poke(self, lane: _Lane) -> None:
        """Wake the lane's loop in WAKE_DELAY_S; pokes meanwhile ride along."""
        if not lane.poked:
            lane.poked = True
            asyncio.get_running_loop().call_later(WAKE_DELAY_S, self._woken, lane)

    @staticmethod
    def _woken(lane: _Lane) -> None:
        lane.poked = False
        lane.wake.set()

    async def start(self) -> None:
        for lane in self._lanes:
            await lane.target.start()
            name = f"pushskip-outbox-{lane.target.name}"
            self._tasks.append(asyncio.create_task(self._deliver_loop(lane), name=name))
        if self.targets:
            self._tasks.append(asyncio.create_task(self._trim_loop(), name="pushskip-outbox-trim"))

    async def stop(self) -> None:
        """Stop claiming; deliveries under way are abandoned (their lease brings them back),
        outcomes not yet written are written."""
        await cancel_and_wait(self._tasks)
        for lane in self._lanes:
            await cancel_and_wait(list(lane.inflight))
            if lane.settled:
                with contextlib.suppress(RedisError, OSError):
                    await self._step.call_raw(lane.target.name, "0", "0", *lane.settled)
            await lane.target.aclose()

    async def _deliver_loop(self, lane: _Lane) -> None:
        target = lane.target
        loop = asyncio.get_running_loop()
        while True:
            lane.wake.clear()
            free = lane.capacity(loop.time())
            settled, lane.settled = lane.settled, []
            wait_s = POLL_S
            if lane.paused_until is not None and lane.paused_until > loop.time():
                wait_s = lane.paused_until - loop.time()
            if free > 0 or settled:
                try:
                    claimed, next_due_s = await self._claim(target.name, max(free, 0), settled)
                except (RedisError, OSError) as exc:
                    lane.settled = settled + lane.settled  # written with the next round trip
                    logger.warning("outbox %s: claim failed (%r); retrying", target.name, exc)
                    await asyncio.sleep(REDIS_RETRY_S)
                    continue
                for entry in claimed:
                    task = asyncio.create_task(self._deliver_one(lane, entry))
                    lane.inflight.add(task)
                    task.add_done_callback(lane.inflight.discard)
                if free > 0 and len(claimed) == free and lane.paused_until is None:
                    continue  # more may be due: claim again once there is room
                if next_due_s is not None and lane.paused_until is None:
                    wait_s = min(POLL_S, next_due_s)
            try:
                async with asyncio.timeout(wait_s):
                    await lane.wake.wait()
            except TimeoutError:
                pass

    async def _claim(
        self, target: str, limit: int, settled: list[str]
    ) -> tuple[list[Entry], float | None]:
        """Write the outcomes in `settled`, then claim up to `limit` due entries; the entries,
        and in how many seconds the next one is due (None: none)."""
        next_due_ms, *flat = await self._step.call_raw(
            target, str(limit), str(self.lease_ms), *settled
        )
        entries = []
        for i in range(0, len(flat), 4):
            entry_id, raw, attempt, recorded = flat[i : i + 4]
            try:
                data = json.loads(raw)
            except ValueError:
                logger.error("outbox %s: entry %s is not JSON; dropping it", target, entry_id)
                await self._step.call_raw(target, "0", "0", str(entry_id), "done")
                continue
            entries.append(Entry(str(entry_id), data, int(attempt), int(float(recorded))))
        return entries, (int(next_due_ms) / 1000 if int(next_due_ms) >= 0 else None)

    async def _deliver_one(self, lane: _Lane, entry: Entry) -> None:
        target = lane.target
        counters = self.metrics.outbox_counters(target.name)
        try:
            delivered = await target.deliver(entry)
        except Exception:
            logger.exception("outbox %s: delivering %s failed", target.name, entry.id)
            delivered = False
        self._note(lane, delivered)
        if delivered:
            outcome = "done"
            counters.delivered.inc()
        else:
            delay_s = backoff_s(entry.attempt, self.backoff_max_s)
            age_ms = time.time() * 1000 - entry.recorded_ms
            if age_ms + delay_s * 1000 > self.retry_ms:
                logger.warning(
                    "outbox %s: %s not delivered in %.0f s (%d attempts); dropped",
                    target.name,
                    entry.id,
                    age_ms / 1000,
                    entry.attempt,
                )
                outcome = "done"
                counters.dropped.inc()
            else:
                outcome = str(int(delay_s * 1000))
                counters.retried.inc()
        # Written with the lane's next claim; until then (or if this process dies first)
        # the lease holds the entry.
        lane.settled += (entry.id, outcome)
        self._poke(lane)

    def _note(self, lane: _Lane, delivered: bool) -> None:
        """The breaker: open after BREAKER_FAILURES failures in a row, closed by a success."""
        name = lane.target.name
        if delivered:
            if lane.paused_until is not None:
                logger.warning("outbox %s: delivering again after %d failures", name, lane.failures)
            lane.failures, lane.paused_until, lane.pause_s = 0, None, BACKOFF_START_S
            return
        lane.failures += 1
        if lane.failures < BREAKER_FAILURES:
            return
        now = asyncio.get_running_loop().time()
        if lane.paused_until is None:
            logger.warning(
                "outbox %s: %d deliveries in a row failed; trying one at a time, with pauses "
                "(up to %.0f s) between tries, until one goes through",
                name,
                lane.failures,
                self.backoff_max_s,
            )
        elif now >= lane.paused_until:
            lane.pause_s = min(lane.pause_s * 2, self.backoff_max_s)  # the probe failed
        else:
            # A delivery that was under way when the breaker opened: the pause stands (many
            # failing at once, as when a delivering process dies, must not lengthen it).
            return
        lane.paused_until = now + lane.pause_s

    async def trim(self) -> None:
        """Bound each target's outbox and refresh its gauges (also run every TRIM_EVERY_S)."""
        for target in self.targets:
            dropped, pending, oldest = await self._trim.call_raw(
                target.name, str(self.retry_ms), str(self.max_pending)
            )
            gauges = self.metrics.outbox_counters(target.name)
            if int(dropped):
                logger.warning(
                    "outbox %s: dropped %s entries (too old or too many)", target.name, dropped
                )
                gauges.dropped.inc(int(dropped))
            gauges.pending.set(int(pending))
            oldest_ms = int(oldest)
            gauges.oldest_age.set(
                max(0.0, time.time() - oldest_ms / 1000) if oldest_ms >= 0 else 0.0
            )

    async def _trim_loop(self) -> None:
        while True:
            try:
                await self.trim()
            except (RedisError, OSError) as exc:
                logger.debug("outbox trim failed: %r", exc)
            await asyncio.sleep(TRIM_EVERY_S)

