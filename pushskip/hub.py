"""One Redis pub/sub connection per process, fanned out to local sockets.

The shape is broadcaster's: a single listener task reads the pub/sub
connection and hands each event to the local subscribers of its user. A
user's channel is SUBSCRIBEd when their first local socket arrives and
UNSUBSCRIBEd when the last one leaves, whatever the number of tabs.

Backpressure policy (unlike broadcaster, whose queues are unbounded): each
subscriber has a bounded queue and the listener never waits on a socket.
When a queue is full, what happens depends on the socket's writer:
- it is blocked in a send that started more than `slow_send_s` ago: the
  reader has stopped keeping up, so the subscriber is marked for closing and
  `ws.py` closes the socket with 1013. The client falls back to polling and
  reconnects with `after=`, losing nothing.
- otherwise (a burst, or a replay still running): the queued events are
  dropped for a single RESYNC marker, since every one of them is in the log.
Either way memory per socket stays bounded, and one slow or dead socket
never delays the others.

Faults: when the pub/sub connection drops, the listener reconnects with
backoff, resubscribes every local user and asks every subscriber to resync
from the log (`RESYNC`), so events published while it was deaf are replayed.
A watchdog publishes to this process's probe channel and expects to hear it
back; a listener that stays silent is torn down and rebuilt the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from pushskip import keys
from pushskip.events import RawEvent, parse_raw
from pushskip.metrics import Metrics

logger = logging.getLogger("pushskip.hub")

# Markers a subscriber's mailbox may hold besides events.
RESYNC: Final = "resync"  # read the log from the last sent seq: live events may be missing
PONG: Final = "pong"  # answer an application-level ping
Item = RawEvent | str

SUBSCRIBE_TIMEOUT_S = 5.0
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0


class HubUnavailable(Exception):
    """The pub/sub connection is down: a socket cannot be promised live events now."""


class Subscriber:
    """One socket's place in the hub: a bounded mailbox and the reason it must close.

    Kept small on purpose (a list and one future made only while the writer
    waits, instead of an asyncio.Queue and an Event): a process holds one per
    open socket, and idle sockets are most of them.
    """

    __slots__ = (
        "_items",
        "_waiter",
        "close_code",
        "limit",
        "sending_since",
        "slow_send_s",
        "user_id",
    )

    def __init__(self, user_id: str, limit: int, slow_send_s: float) -> None:
        self.user_id = user_id
        self.limit = limit
        self.slow_send_s = slow_send_s
        # Loop time at which the socket's current send began; None when idle.
        self.sending_since: float | None = None
        self.close_code: int | None = None
        self._items: list[Item] = []
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Subscriber(user_id={self.user_id!r}, queued={len(self._items)})"

    def offer(self, item: Item) -> None:
        """Queue an item without waiting; a full mailbox is handled as the module says."""
        if self.close_code is not None:
            return
        if len(self._items) < self.limit:
            self._items.append(item)
        else:
            started = self.sending_since
            loop = asyncio.get_running_loop()
            if started is not None and loop.time() - started > self.slow_send_s:
                self.close(1013)
                return
            # Every dropped event is in the log; a dropped pong is answered at the next ping.
            self._items = [RESYNC]
        self.wake()

    def wake(self) -> None:
        """Wake the writer waiting in `next()`."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Item | None:
        """The oldest queued item; None when woken with nothing queued (look at close_code)."""
        if not self._items and self.close_code is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0) if self._items else None

    def close(self, code: int) -> None:
        """Ask the socket to close with `code`; its writer stops after its current send."""
        if self.close_code is None:
            self.close_code = code
        self.wake()


class Hub:
    def __init__(
        self,
        redis: Redis,
        pubsub_redis: Redis,
        metrics: Metrics,
        *,
        queue_size: int,
        slow_send_s: float,
        watchdog_interval_s: float,
    ) -> None:
        self.redis = redis
        # A client whose connections never retry by themselves: redis-py's
        # pub/sub would otherwise reconnect and resubscribe silently, and the
        # events published in between would never be replayed.
        self.pubsub_redis = pubsub_redis
        self.metrics = metrics
        self.queue_size = queue_size
        self.slow_send_s = slow_send_s
        self.watchdog_interval_s = watchdog_interval_s
        self.probe_channel = keys.PROBE_CHANNEL + secrets.token_hex(8)
        self._users: dict[str, set[Subscriber]] = {}
        # Per user: resolved once their channel's first SUBSCRIBE is confirmed.
        self._live: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        self._closing = False
        # Channel commands go one at a time, and a SUBSCRIBE is only done when
        # Redis confirms it: a socket reads the log only after that, so no
        # event falls between the log read and the subscription.
        self._channel_lock = asyncio.Lock()
        self._confirm: tuple[str, asyncio.Future[None]] | None = None
        self._probe_heard = asyncio.Event()
        self._deaf = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Hub(users={len(self._users)}, ready={self._ready.is_set()})"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def subscribers(self) -> list[Subscriber]:
        return [s for subs in self._users.values() for s in subs]

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="pushskip-hub-listener"),
            asyncio.create_task(self._watchdog(), name="pushskip-hub-watchdog"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), SUBSCRIBE_TIMEOUT_S)

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_pubsub()

    async def close_all(self, code: int, *, timeout_s: float = 5.0) -> None:
        """Ask every socket to close with `code` and wait until they have left."""
        self._closing = True
        for sub in self.subscribers:
            sub.close(code)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._users and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: str) -> AsyncIterator[Subscriber]:
        """A subscriber for `user_id` whose channel is live before this yields."""
        if self._closing:
            raise HubUnavailable("shutting down")
        sub = Subscriber(user_id, self.queue_size, self.slow_send_s)
        subs = self._users.setdefault(user_id, set())
        first = not subs
        subs.add(sub)
        self.metrics.subscribed_users.set(len(self._users))
        try:
            if first:
                live = self._live[user_id] = asyncio.get_running_loop().create_future()
                # Later tabs wait on this; mark a failure as seen even if none do.
                live.add_done_callback(lambda f: f.cancelled() or f.exception())
                try:
                    await self._subscribe_channel(keys.user_channel(user_id))
                except BaseException as exc:
                    live.set_exception(HubUnavailable(f"subscribe failed: {exc!r}"))
                    raise
                live.set_result(None)
            else:
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self._live[user_id]), SUBSCRIBE_TIMEOUT_S
                    )
                except TimeoutError:
                    raise HubUnavailable("subscription not confirmed") from None
            yield sub
        finally:
            subs.discard(sub)
            if not subs and self._users.get(user_id) is subs:
                del self._users[user_id]
                self._live.pop(user_id, None)
                await self._unsubscribe_channel(keys.user_channel(user_id))
            self.metrics.subscribed_users.set(len(self._users))

    async def _wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise HubUnavailable("pub/sub connection is down") from None

    async def _subscribe_channel(self, channel: str) -> None:
        await self._wait_ready()
        async with self._channel_lock:
            pubsub = self._pubsub
            if pubsub is None or not self._ready.is_set():
                # The listener went down meanwhile; it subscribes every local
                # user when it is back. Wait for that.
                await self._wait_ready()
                return
            confirmed = asyncio.get_running_loop().create_future()
            self._confirm = (channel, confirmed)
            try:
                await pubsub.subscribe(channel)
                await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT_S)
            except (RedisError, OSError, TimeoutError) as exc:
                self._deaf.set()
                raise HubUnavailable(f"could not subscribe: {exc!r}") from None
            finally:
                self._confirm = None

    async def _unsubscribe_channel(self, channel: str) -> None:
        async with self._channel_lock:
            pubsub = self._pubsub
            if pubsub is None or not self._ready.is_set():
                return  # a rebuilt connection subscribes only current users
            try:
                await pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:
                logger.warning("unsubscribe failed, rebuilding pub/sub: %r", exc)
                self._deaf.set()

    def _dispatch(self, channel: str, data: str) -> None:
        if channel == self.probe_channel:
            self._probe_heard.set()
            return
        user_id = keys.user_from_channel(channel)
        subs = self._users.get(user_id) if user_id else None
        if not subs:
            return
        try:
            event = parse_raw(data)
        except ValueError:
            logger.error("dropping malformed event on %s", channel)
            return
        for sub in list(subs):
            sub.offer(event)

    async def _connect(self) -> PubSub:
        """A new pub/sub connection subscribed to the probe and every local user."""
        pubsub = self.pubsub_redis.pubsub()
        channels = [self.probe_channel] + [keys.user_channel(u) for u in self._users]
        await pubsub.subscribe(*channels)
        pending = set(channels)
        # Confirmations arrive in order; wait until Redis has them all.
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while pending:
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    pending.discard(message["channel"])
                elif message["type"] == "message":
                    self._dispatch(message["channel"], message["data"])
        return pubsub

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        connected_before = False
        while True:
            try:
                async with self._channel_lock:
                    self._deaf.clear()
                    self._pubsub = await self._connect()
                    self._ready.set()
                if connected_before:
                    self.metrics.redis_reconnects.inc()
                    logger.warning(
                        "pub/sub reconnected; resubscribed %d users, replaying from logs",
                        len(self._users),
                    )
                    for sub in self.subscribers:
                        sub.offer(RESYNC)
                connected_before = True
                backoff = BACKOFF_START_S
                await self._listen(self._pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self._ready.is_set() or not connected_before:
                    logger.error("pub/sub connection lost: %r; reconnecting", exc)
            self._ready.clear()
            await self._drop_pubsub()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _listen(self, pubsub: PubSub) -> None:
        while not self._deaf.is_set():
            message = await pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._dispatch(message["channel"], message["data"])
            elif kind == "subscribe" and self._confirm and self._confirm[0] == message["channel"]:
                confirmed = self._confirm[1]
                if not confirmed.done():
                    confirmed.set_result(None)
        raise RedisError("listener declared deaf")

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _watchdog(self) -> None:
        """Publish to our own probe channel; a listener that does not hear it is deaf."""
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            if not self._ready.is_set():
                continue
            self._probe_heard.clear()
            try:
                receivers = await self.redis.publish(self.probe_channel, "probe")
            except (RedisError, OSError):
                continue  # Redis itself is away; the listener will notice on its own
            heard = False
            if receivers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_heard.wait(), self.watchdog_interval_s)
                    heard = True
            if not heard and self._ready.is_set():
                logger.error(
                    "PUB/SUB LISTENER IS DEAF (probe %s, receivers=%s); rebuilding it and "
                    "replaying every local user's log",
                    self.probe_channel,
                    receivers,
                )
                self.metrics.deaf_recoveries.inc()
                self._deaf.set()
