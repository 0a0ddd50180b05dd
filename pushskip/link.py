"""The process's one Redis pub/sub connection: connect, confirm, listen, reconnect, watch.

`PubSubLink` is the transport under the hub (as broadcaster's backend is under
`Broadcast`): it knows channels, not users or sockets. It hands every message
to the `Listener` it was started for, and asks the listener which channels to
subscribe when it (re)connects.

Guarantees:
- `subscribe(channel)` returns only once Redis has confirmed that SUBSCRIBE
  on the connection that is listening now, so whatever is published after it
  returns is heard. Each caller waits for its own confirmation: a slow one
  holds up nobody else, and a confirmation that does not come in time fails
  only that caller (`LinkUnavailable`).
- When the connection drops, or the watchdog finds it deaf (a probe it
  publishes to itself is not heard back), the link drops it, reconnects with
  backoff, subscribes every channel the listener names, and then calls the
  listener's `resync()`: messages published while it was deaf are not lost
  for good, the listener reads them from wherever they are kept.
- In a Redis Cluster (`source.sharded`) the link uses sharded pub/sub:
  SSUBSCRIBE on the node that holds pushskip's slot (the source says which,
  anew at each reconnect). When that node hands the slot on (a failover, a
  resharding) it unsubscribes the link's channels itself; the link takes that
  as a lost connection and reconnects where the slot is now.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from pushskip import keys
from pushskip.metrics import Metrics
from pushskip.redisform import Commands, PubSubSource
from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.link")

SUBSCRIBE_TIMEOUT_S = 5.0
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
# How often the listening loop looks up from an idle connection to see whether
# a rebuild was asked for.
LISTEN_POLL_S = 0.5


class LinkUnavailable(Exception):
    """A subscription could not be confirmed in time: the connection is down or stuck."""


class _Replaced(Exception):
    """The connection a SUBSCRIBE was sent on went away before Redis confirmed it."""


class _SlotMoved(Exception):
    """The node unsubscribed our sharded channels: the slot is served elsewhere now."""


class Listener(Protocol):
    def deliver(self, channel: str, data: str) -> None:
        """A message arrived on `channel`; must not wait."""

    def channels(self) -> Iterable[str]:
        """Every channel a new connection must subscribe."""

    def resync(self) -> None:
        """The connection was rebuilt: messages may have been missed while it was down."""


class PubSubLink:
    def __init__(
        self,
        redis: Commands,
        source: PubSubSource,
        metrics: Metrics,
        *,
        watchdog_interval_s: float,
    ) -> None:
        # Commands (the watchdog's PUBLISH) go through the shared client.
        self.redis = redis
        # Where the pub/sub connection goes. Its connections never retry by themselves:
        # redis-py's pub/sub would otherwise reconnect and resubscribe silently, and the
        # messages published in between would never be resynced.
        self.source = source
        self.sharded = source.sharded
        # The message types of the pub/sub in use: classic, or sharded.
        self._kinds = ("smessage", "ssubscribe", "sunsubscribe") if self.sharded else (
            "message", "subscribe", "unsubscribe"
        )
        self.listener: Listener | None = None
        self.metrics = metrics
        self.watchdog_interval_s = watchdog_interval_s
        self.probe_channel = keys.PROBE_CHANNEL + secrets.token_hex(8)
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        # Set to ask the listening loop to drop the connection and build a new one.
        self._rebuild = asyncio.Event()
        self._probe_heard = asyncio.Event()
        # Per channel, the callers waiting for a SUBSCRIBE confirmation, oldest
        # first: Redis confirms in the order the commands were sent.
        self._pending: dict[str, collections.deque[asyncio.Future[None]]] = {}
        # Sharded channels we asked to leave (their SUNSUBSCRIBE is ours, not a slot move).
        self._unsubscribed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"PubSubLink(ready={self.ready}, probe={self.probe_channel!r})"

    @property
    def ready(self) -> bool:
        """Connected, subscribed to every channel the listener named, and listening."""
        return self._ready.is_set()

    async def start(self, listener: Listener) -> None:
        """Start listening for `listener`; waits (bounded) for the first connection."""
        self.listener = listener
        self._tasks = [
            asyncio.create_task(self._run(), name="pushskip-link-listener"),
            asyncio.create_task(self._watchdog(), name="pushskip-link-watchdog"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), SUBSCRIBE_TIMEOUT_S)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._ready.clear()
        await self._drop()

    async def subscribe(self, channel: str) -> None:
        """SUBSCRIBE `channel` and wait until Redis confirms it on the listening connection."""
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                while True:
                    await self._ready.wait()
                    try:
                        await self._subscribe_once(channel)
                        return
                    except _Replaced:
                        continue  # the next connection; it may already name this channel
        except TimeoutError:
            raise LinkUnavailable(f"SUBSCRIBE {channel} not confirmed in time") from None

    async def _subscribe_once(self, channel: str) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            raise _Replaced
        confirmed = asyncio.get_running_loop().create_future()
        waiting = self._pending.setdefault(channel, collections.deque())
        waiting.append(confirmed)
        try:
            try:
                await self._send_subscribe(pubsub, channel)
            except (RedisError, OSError) as exc:
                logger.warning("SUBSCRIBE failed, rebuilding pub/sub: %r", exc)
                self._rebuild.set()
                raise _Replaced from None
            await confirmed
        finally:
            with contextlib.suppress(ValueError):
                waiting.remove(confirmed)
            if not waiting and self._pending.get(channel) is waiting:
                del self._pending[channel]

    async def unsubscribe(self, channel: str) -> None:
        """UNSUBSCRIBE `channel`; a connection built later does not name it anyway."""
        pubsub = self._pubsub
        if pubsub is None or not self._ready.is_set():
            return
        try:
            if self.sharded:
                self._unsubscribed.add(channel)
                await pubsub.sunsubscribe(channel)
            else:
                await pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            logger.warning("UNSUBSCRIBE failed, rebuilding pub/sub: %r", exc)
            self._rebuild.set()

    def _confirm(self, channel: str) -> None:
        waiting = self._pending.get(channel)
        while waiting:
            confirmed = waiting.popleft()
            if not confirmed.done():
                confirmed.set_result(None)
                return

    def _replace_pending(self) -> None:
        """Every SUBSCRIBE in flight was on the connection just dropped: send it again."""
        for waiting in self._pending.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_exception(_Replaced())
                    # Marked retrieved: its caller may have timed out meanwhile.
                    confirmed.exception()
            waiting.clear()
        self._pending.clear()

    async def _send_subscribe(self, pubsub: PubSub, *channels: str) -> None:
        if self.sharded:
            self._unsubscribed.difference_update(channels)
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    def _handle(self, message: dict[str, str]) -> None:
        kind, channel = message["type"], message["channel"]
        published, subscribed, unsubscribed = self._kinds
        if kind == published:
            if channel == self.probe_channel:
                self._probe_heard.set()
            elif self.listener is not None:
                self.listener.deliver(channel, message["data"])
        elif kind == subscribed:
            self._confirm(channel)
        elif kind == unsubscribed and self.sharded and channel not in self._unsubscribed:
            # Not asked for: the node no longer serves the slot (SUNSUBSCRIBE push).
            raise _SlotMoved(channel)
        elif kind == unsubscribed:
            self._unsubscribed.discard(channel)

    async def _connect(self) -> PubSub:
        """A new connection subscribed to the probe and every channel the listener names
        (still names, once Redis has confirmed them all)."""
        pubsub = (await self.source.client()).pubsub()
        named = self.listener.channels() if self.listener is not None else ()
        channels = [self.probe_channel, *named]
        self._unsubscribed.clear()
        await self._send_subscribe(pubsub, *channels)
        pending = set(channels)
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while pending:
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is None:
                    continue
                if message["type"] == self._kinds[1]:
                    pending.discard(message["channel"])
                self._handle(message)
        # A user whose last socket left meanwhile could not unsubscribe (we were
        # not ready): drop their channel now, or it would stay until the next rebuild.
        still = set(self.listener.channels()) if self.listener is not None else set()
        gone = [c for c in channels[1:] if c not in still]
        if gone:
            if self.sharded:
                self._unsubscribed.update(gone)
                await pubsub.sunsubscribe(*gone)
            else:
                await pubsub.unsubscribe(*gone)
        return pubsub

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        connected_before = False
        while True:
            try:
                self._rebuild.clear()
                self._pubsub = await self._connect()
                self._ready.set()
                if connected_before and self.listener is not None:
                    self.metrics.redis_reconnects.inc()
                    logger.warning("pub/sub reconnected; resynchronising every local subscriber")
                    self.listener.resync()
                connected_before = True
                backoff = BACKOFF_START_S
                await self._listen(self._pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, _SlotMoved) as exc:
                if self._ready.is_set() or not connected_before:
                    logger.error("pub/sub connection lost: %r; reconnecting", exc)
            self._ready.clear()
            self._replace_pending()
            await self._drop()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _listen(self, pubsub: PubSub) -> None:
        """Hand on messages until the connection fails or a rebuild is asked for."""
        while not self._rebuild.is_set():
            message = await pubsub.get_message(timeout=LISTEN_POLL_S)
            if message is not None:
                self._handle(message)

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _watchdog(self) -> None:
        """Publish to our own probe channel; a connection that does not hear it is deaf."""
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            if not self._ready.is_set():
                continue
            self._probe_heard.clear()
            try:
                if self.sharded:
                    receivers = await self.redis.spublish(self.probe_channel, "probe")
                else:
                    receivers = await self.redis.publish(self.probe_channel, "probe")
            except (RedisError, OSError):
                continue  # Redis itself is away; the listening loop notices on its own
            heard = False
            if receivers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_heard.wait(), self.watchdog_interval_s)
                    heard = True
            if not heard and self._ready.is_set():
                logger.error(
                    "PUB/SUB LISTENER IS DEAF (probe %s, receivers=%s); rebuilding it and "
                    "resynchronising every local subscriber",
                    self.probe_channel,
                    receivers,
                )
                self.metrics.deaf_recoveries.inc()
                self._rebuild.set()
