"""Presence: a partner who vanishes is declared gone, once, by whichever process looks.

Contract: API.md, Presence. The cost is per process, not per connected user:

- Each process renews a lease (`presence:procs`, `lua/lease.lua`) every
  `lease_s / 3` and keeps, in `presence:sockets:{process}`, the users that
  have at least one socket open on it. A user enters that set when their
  first local socket opens and leaves it when their last one closes; an idle
  socket costs nothing.
- A user's last socket closing, and every authenticated HTTP request, push
  their deadline (`presence:deadlines`) to now + grace.
- Every process runs `lua/sweep.lua` every `sweep_s`: a due user that no live
  process lists is gone (their match ends with `partner-left`, reason
  `disconnected`, or they leave the queue), in one atomic step, so a gone
  user is ended once however many processes sweep. The users of a process
  whose lease expired (SIGKILL, OOM) get the deadline lease expiry + grace.

Writes go through one task that sends the current local state of every user
that changed since its last write, so an open and a close of the same user
can never reach Redis in the wrong order, and a write that fails (Redis away)
is sent again with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from pushskip import keys
from pushskip.redisform import Commands
from pushskip.scripts import Script
from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.presence")

# Most due users one sweep looks at; the rest wait for the next sweep.
SWEEP_LIMIT = 500
# An HTTP request pushes the deadline at most this often per user and process
# (and at most four times per grace, so a deadline is renewed well before it is due).
TOUCH_EVERY_S = 1.0
RETRY_S = 1.0


class Presence:
    def __init__(
        self,
        redis: Commands,
        *,
        grace_s: float,
        lease_s: float,
        sweep_s: float,
        cooldown_s: int,
        retention_ms: int,
        outbox: frozenset[str] = frozenset(),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """`outbox` and `on_change`: as for `Store` (a gone user's match ends in the sweep)."""
        self.redis = redis
        self._on_change = on_change
        self.grace_ms = int(grace_s * 1000)
        self.lease_s = lease_s
        self.sweep_s = sweep_s
        self.cooldown_s = cooldown_s
        self.touch_every_s = min(TOUCH_EVERY_S, grace_s / 4)
        self.process_id = secrets.token_hex(8)
        self._lease = Script(redis, "lease", retention_ms=retention_ms)
        self._sweep = Script(redis, "sweep", retention_ms=retention_ms, outbox=outbox)
        self._presence = Script(redis, "presence", retention_ms=retention_ms)
        # Open sockets per local user, and in all; the users whose entry Redis has not seen yet.
        self._sockets: dict[str, int] = {}
        self._open = 0
        self._changed: set[str] = set()
        # The changed users whose write is on its way to Redis.
        self._writing: set[str] = set()
        # Until when (monotonic) Redis surely holds this process's lease, from its last renewal.
        self._lease_until = 0.0
        self._touched: dict[str, float] = {}
        self._to_touch: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.gone = 0

    def __repr__(self) -> str:
        return f"Presence(process={self.process_id!r}, users={len(self._sockets)})"

    def socket_opened(self, user_id: str) -> None:
        self._open += 1
        count = self._sockets.get(user_id, 0)
        self._sockets[user_id] = count + 1
        if count == 0:
            self._mark(user_id)

    def socket_closed(self, user_id: str) -> None:
        self._open -= 1
        count = self._sockets.get(user_id, 0) - 1
        if count > 0:
            self._sockets[user_id] = count
            return
        self._sockets.pop(user_id, None)
        self._mark(user_id)

    def claim_touch(self, user_id: str) -> int:
        """An authenticated request of `user_id`: the grace (ms) to push their deadline by
        now, if that is due (at most once a second per user), else 0. A claim is written by
        `write_touch`, or by the request's own step (enqueue and skip: Store), or given back
        with `forget_touch` when the request failed. A request of the same user in flight
        meanwhile writes none (one claim per second), so it may be answered before the
        claiming request's write; a claim given back leaves the deadline to the next
        request, well inside the grace (at most four claims per grace).

        Nothing is due while Redis lists the user among this process's sockets: they are
        present as long as it does, and their last socket closing pushes the deadline to a
        later moment than this request would."""
        now = time.monotonic()
        if (
            user_id in self._sockets
            and user_id not in self._changed
            and user_id not in self._writing
            and now < self._lease_until
        ):
            return 0
        if now - self._touched.get(user_id, -self.touch_every_s) < self.touch_every_s:
            return 0
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[user_id] = now
        return self.grace_ms

    def forget_touch(self, user_id: str) -> None:
        """A claimed touch was not written (its request failed): the next request makes it."""
        self._touched.pop(user_id, None)

    async def write_touch(self, user_id: str) -> None:
        """Write a claimed touch; left to the writer if Redis fails."""
        try:
            await self._presence(self.process_id, str(self.grace_ms), "0", "0", user_id)
        except (RedisError, OSError):
            self._to_touch.add(user_id)
            self._wake.set()

    def _mark(self, user_id: str) -> None:
        self._changed.add(user_id)
        self._wake.set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="pushskip-presence-writer"),
            asyncio.create_task(self._lease_loop(), name="pushskip-presence-lease"),
            asyncio.create_task(self._sweep_loop(), name="pushskip-presence-sweep"),
        ]

    async def stop(self) -> None:
        """Stop, handing this process's users over to the deadlines (no lease to wait out)."""
        await cancel_and_wait(self._tasks)
        self._changed.update(self._sockets)
        self._sockets.clear()
        self._open = 0
        with contextlib.suppress(RedisError, OSError):
            await self._write()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.PRESENCE_PROCS, self.process_id)
                pipe.delete(keys.presence_sockets(self.process_id))
                pipe.hdel(keys.PRESENCE_COUNTS, self.process_id)
                await pipe.execute()

    async def _write(self) -> None:
        """Send the local state of every changed user, and the touches, in one script call."""
        changed, self._changed = self._changed, set()
        touched, self._to_touch = self._to_touch, set()
        if not changed and not touched:
            return
        here = [u for u in changed if u in self._sockets]
        away = [u for u in changed if u not in self._sockets]
        self._writing = changed
        try:
            await self._presence(
                self.process_id,
                str(self.grace_ms),
                str(len(here)),
                *here,
                str(len(away)),
                *away,
                *touched,
            )
        except BaseException:
            # Not written: the next write sends them (with the state of then).
            self._changed |= changed
            self._to_touch |= touched
            raise
        finally:
            self._writing = set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write()
            except (RedisError, OSError) as exc:
                logger.warning("presence write failed (%r); retrying", exc)
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    async def _lease_loop(self) -> None:
        while True:
            try:
                sent_at = time.monotonic()
                known = await self._lease(
                    self.process_id, str(int(self.lease_s * 1000)), str(self._open)
                )
                # Renewed (or made anew: then the users below are listed again, and
                # `touch` writes for them until they are).
                self._lease_until = sent_at + self.lease_s
                if known == "0" and self._sockets:
                    logger.warning(
                        "presence lease was unknown to Redis; listing %d users again",
                        len(self._sockets),
                    )
                    self._changed.update(self._sockets)
                    self._wake.set()
            except (RedisError, OSError) as exc:
                logger.debug("presence lease not renewed: %r", exc)
            await asyncio.sleep(self.lease_s / 3)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                reply = json.loads(
                    await self._sweep(str(self.grace_ms), str(SWEEP_LIMIT), str(self.cooldown_s))
                )
            except (RedisError, OSError, ValueError) as exc:
                logger.debug("presence sweep failed: %r", exc)
                continue
            if reply.get("ended") and self._on_change is not None:
                self._on_change()
            if reply.get("ended") or reply.get("dequeued") or reply.get("dead"):
                self.gone += int(reply.get("ended", 0)) + int(reply.get("dequeued", 0))
                logger.info(
                    "presence: %s matches ended, %s waiting users dequeued, %s dead processes",
                    reply.get("ended"),
                    reply.get("dequeued"),
                    reply.get("dead"),
                )
