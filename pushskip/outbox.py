"""The outbox: work that must follow an atomic Redis step, delivered at least once by any
process, never on the path of a skip, its push or its reply.

The Lua step that makes a change records what must follow it (a webhook, a
media room to delete) as an entry of a *target*'s outbox, in the same step
(`lua/lib.lua: record_outbox`), so a process that dies right after the step
loses nothing. Each entry has a stable id (the webhook's `webhook-id`), so a
receiver can drop repeats.

Delivery (this module), per target, in every process that has the target:
- `lua/outbox_claim.lua` claims due entries: a claimed entry is not due again
  for `lease_s`, so one process at a time delivers it; a process that dies
  mid-delivery leaves it to be claimed again after the lease.
- An entry may name a predecessor (a room's `match.ended` names its
  `match.created`); it is not claimed before the predecessor is settled.
- A failed attempt is due again after an exponential backoff (full jitter,
  capped at `backoff_max_s`); an entry not delivered `retry_s` after it was
  recorded is dropped and counted. `lua/outbox_settle.lua` settles each.
- `lua/outbox_trim.lua`, every few seconds, drops what is past the retry
  window or beyond `max_pending` entries (a receiver down for long costs
  bounded memory) and reports the outbox's length and oldest entry.

A process that records entries wakes its own deliverer (`wake()`, coalesced
over a few milliseconds so a burst of skips costs one claim); the others find
them by polling every `POLL_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pushskip.metrics import Metrics
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


class Outbox:
    def __init__(
        self,
        redis: Redis,
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
        self._claim = Script(redis, "outbox_claim", retention_ms=retention_ms)
        self._settle = Script(redis, "outbox_settle", retention_ms=retention_ms)
        self._trim = Script(redis, "outbox_trim", retention_ms=retention_ms)
        self._wakes = {t.name: asyncio.Event() for t in self.targets}
        self._wake_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Outbox(targets={[t.name for t in self.targets]})"

    @property
    def names(self) -> frozenset[str]:
        """The targets whose entries the Lua steps record."""
        return frozenset(t.name for t in self.targets)

    def wake(self) -> None:
        """Entries were recorded by this process: claim them soon (coalesced)."""
        if self._wake_scheduled or not self.targets:
            return
        self._wake_scheduled = True
        asyncio.get_running_loop().call_later(WAKE_DELAY_S, self._wake_all)

    def _wake_all(self) -> None:
        self._wake_scheduled = False
        for event in self._wakes.values():
            event.set()

    async def start(self) -> None:
        for target in self.targets:
            self._tasks.append(
                asyncio.create_task(
                    self._deliver_loop(target), name=f"pushskip-outbox-{target.name}"
                )
            )
        if self.targets:
            self._tasks.append(asyncio.create_task(self._trim_loop(), name="pushskip-outbox-trim"))

    async def stop(self) -> None:
        """Stop claiming; deliveries under way are abandoned (their lease brings them back)."""
        await cancel_and_wait(self._tasks)
        await cancel_and_wait(list(self._deliveries))
        for target in self.targets:
            await target.aclose()

    async def _deliver_loop(self, target: Target) -> None:
        wake = self._wakes[target.name]
        inflight: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            self._deliveries.discard(task)
            wake.set()  # room for more, and what it settled may have freed a successor

        while True:
            wake.clear()
            free = target.concurrency - len(inflight)
            claimed: list[Entry] = []
            wait_s = POLL_S
            if free > 0:
                try:
                    claimed, next_due_s = await self._claim_entries(target.name, free)
                    if next_due_s is not None:
                        wait_s = min(POLL_S, next_due_s)
                except (RedisError, OSError) as exc:
                    logger.warning("outbox %s: claim failed (%r); retrying", target.name, exc)
                    await asyncio.sleep(REDIS_RETRY_S)
                    continue
            for entry in claimed:
                task = asyncio.create_task(self._deliver_one(target, entry))
                inflight.add(task)
                self._deliveries.add(task)
                task.add_done_callback(finished)
            if claimed and len(claimed) == free:
                continue  # more may be due: claim again as soon as there is room
            try:
                async with asyncio.timeout(wait_s):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _claim_entries(self, target: str, limit: int) -> tuple[list[Entry], float | None]:
        """The entries claimed, and in how many seconds the next one is due (None: none)."""
        next_due_ms, *flat = await self._claim.call_raw(target, str(limit), str(self.lease_ms))
        entries = []
        for i in range(0, len(flat), 4):
            entry_id, raw, attempt, recorded = flat[i : i + 4]
            try:
                data = json.loads(raw)
            except ValueError:
                logger.error("outbox %s: entry %s is not JSON; dropping it", target, entry_id)
                await self._settle(target, entry_id, "done")
                continue
            entries.append(Entry(str(entry_id), data, int(attempt), int(float(recorded))))
        return entries, (int(next_due_ms) / 1000 if int(next_due_ms) >= 0 else None)

    async def _deliver_one(self, target: Target, entry: Entry) -> None:
        labels = self.metrics.outbox_counters(target.name)
        try:
            delivered = await target.deliver(entry)
        except Exception:
            logger.exception("outbox %s: delivering %s failed", target.name, entry.id)
            delivered = False
        if delivered:
            outcome = "done"
            labels.delivered.inc()
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
                labels.dropped.inc()
            else:
                outcome = str(int(delay_s * 1000))
                labels.retried.inc()
        try:
            await self._settle(target.name, entry.id, outcome)
        except (RedisError, OSError) as exc:
            # Not settled: the lease brings it back (a delivered one may then go twice).
            logger.warning("outbox %s: %s not settled (%r)", target.name, entry.id, exc)

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
