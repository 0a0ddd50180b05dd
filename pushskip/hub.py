"""The fan-out: which local sockets each user has, fed by the process's pub/sub link.

The shape is broadcaster's: `PubSubLink` (link.py) owns the one Redis pub/sub
connection of the process and hands every message to the `Hub`, which only
maps users to their local `Subscriber`s. A user's channel is SUBSCRIBEd when
their first local socket arrives and UNSUBSCRIBEd when the last one leaves,
whatever the number of tabs.

Backpressure policy (unlike broadcaster, whose queues are unbounded): each
subscriber has a bounded mailbox and the hub never waits on a socket. When a
mailbox is full, what happens depends on the socket's writer:
- it is blocked in a send that started more than `slow_send_s` ago: the
  reader has stopped keeping up, so the subscriber is closed with
  `SLOW_READER` (1013). The client falls back to polling and reconnects with
  `after=`, losing nothing.
- otherwise (a burst, or a replay still running): the queued events are
  dropped for a single RESYNC marker, since every one of them is in the log.
Either way memory per socket stays bounded, and one slow or dead socket
never delays the others.

Faults: when the link rebuilds its connection it calls `resync()`, and every
subscriber is asked to read the log from its last sent seq, so events
published while the link was deaf are replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Final

from pushskip import closing, keys
from pushskip.closing import CloseReason
from pushskip.events import RawEvent, parse_raw
from pushskip.link import SUBSCRIBE_TIMEOUT_S, LinkUnavailable, PubSubLink
from pushskip.metrics import Metrics

logger = logging.getLogger("pushskip.hub")

# Markers a subscriber's mailbox may hold besides events.
RESYNC: Final = "resync"  # read the log from the last sent seq: live events may be missing
PONG: Final = "pong"  # answer an application-level ping


class Reply(str):
    """The JSON text of a reply to one of the socket's own actions."""


Item = RawEvent | str


class HubUnavailable(Exception):
    """A socket cannot be promised live events now (shutting down, or no subscription)."""


class TooManySockets(Exception):
    """The user already has as many local sockets as one user may hold."""


class Subscriber:
    """One socket's place in the hub: a bounded mailbox and the reason it must close.

    Kept small on purpose (a list and one future made only while the writer
    waits, instead of an asyncio.Queue and an Event): a process holds one per
    open socket, and idle sockets are most of them.
    """

    __slots__ = (
        "_items",
        "_replies",
        "_waiter",
        "close_reason",
        "limit",
        "pong_due",
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
        self.close_reason: CloseReason | None = None
        # Pings are answered with one pong however many came in meanwhile: a
        # burst of pings costs no queue space and never forces a log read.
        self.pong_due = False
        # Replies to the socket's own actions: never dropped (the socket's message
        # rate bounds them), sent after the events queued before them.
        self._replies: list[str] = []
        self._items: list[Item] = []
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Subscriber(user_id={self.user_id!r}, queued={len(self._items)})"

    def offer(self, item: Item) -> None:
        """Queue an item without waiting; a full mailbox is handled as the module says."""
        if self.close_reason is not None:
            return
        if item == PONG:
            self.pong_due = True
        elif len(self._items) < self.limit:
            self._items.append(item)
        else:
            started = self.sending_since
            now = asyncio.get_running_loop().time()
            if started is not None and now - started > self.slow_send_s:
                self.close(closing.SLOW_READER)
                return
            # Every dropped event is in the log.
            self._items = [RESYNC]
        self.wake()

    def reply(self, text: str) -> None:
        """Queue the reply to an action of this socket's client."""
        if self.close_reason is None:
            self._replies.append(text)
            self.wake()

    def wake(self) -> None:
        """Wake the writer waiting in `next()`."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float | None = None) -> Item | None:
        """The oldest queued item; None when woken with nothing queued (look at
        close_reason) or when `timeout` seconds pass first."""
        if not (self._items or self._replies or self.pong_due or self.close_reason):
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, timeout)
            finally:
                self._waiter = None
        if self.close_reason is not None:
            return self._items.pop(0) if self._items else None
        if self.pong_due:
            self.pong_due = False
            return PONG
        # Events queued before a reply go first: a reply never overtakes an event
        # that happened before its action.
        if self._items:
            return self._items.pop(0)
        return Reply(self._replies.pop(0)) if self._replies else None

    def close(self, reason: CloseReason) -> None:
        """Ask the socket to close for `reason`; its writer stops after its current send."""
        if self.close_reason is None:
            self.close_reason = reason
        self.wake()


def control_close(data: str) -> CloseReason | None:
    """The close a control message asks for (`{"type": "close", "reason": "banned"}`, published
    by lua/ban.lua on the user's channel), or None when it is not one."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "close":
        return None
    return closing.BY_CONTROL.get(str(message.get("reason")))


class Hub:
    def __init__(
        self,
        link: PubSubLink,
        metrics: Metrics,
        *,
        queue_size: int,
        slow_send_s: float,
        max_per_user: int,
    ) -> None:
        self.link = link
        self.metrics = metrics
        self.max_per_user = max_per_user
        self.queue_size = queue_size
        self.slow_send_s = slow_send_s
        self._users: dict[str, set[Subscriber]] = {}
        # Per user: resolved once their channel's SUBSCRIBE is confirmed, for later tabs.
        self._live: dict[str, asyncio.Future[None]] = {}
        self._closing = False

    def __repr__(self) -> str:
        return f"Hub(users={len(self._users)}, ready={self.ready})"

    @property
    def ready(self) -> bool:
        return self.link.ready

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def subscribers(self) -> Iterator[Subscriber]:
        return (s for subs in self._users.values() for s in subs)

    async def start(self) -> None:
        await self.link.start(self)

    async def stop(self) -> None:
        self._closing = True
        await self.link.stop()

    async def close_all(self, reason: CloseReason, *, timeout_s: float = 5.0) -> None:
        """Ask every socket to close for `reason` and wait until they have left."""
        self._closing = True
        for sub in list(self.subscribers):
            sub.close(reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._users and loop.time() < deadline:
            await asyncio.sleep(0.02)

    def admit(self, user_id: str) -> None:
        """Raise what subscribe() would raise at once: HubUnavailable when shutting down,
        TooManySockets when the user already has `max_per_user` sockets here."""
        if self._closing:
            raise HubUnavailable("shutting down")
        if len(self._users.get(user_id, ())) >= self.max_per_user:
            raise TooManySockets(user_id)

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: str) -> AsyncIterator[Subscriber]:
        """A subscriber for `user_id` whose channel is live before this yields.

        Raises at once what admit() raises."""
        self.admit(user_id)
        sub = Subscriber(user_id, self.queue_size, self.slow_send_s)
        subs = self._users.get(user_id)
        first = subs is None
        if subs is None:
            subs = self._users[user_id] = set()
        subs.add(sub)
        self.metrics.subscribed_users.set(len(self._users))
        try:
            if first:
                await self._go_live(user_id)
            else:
                await self._wait_live(user_id)
            yield sub
        finally:
            subs.discard(sub)
            if not subs and self._users.get(user_id) is subs:
                del self._users[user_id]
                self._live.pop(user_id, None)
                self.metrics.subscribed_users.set(len(self._users))
                await self.link.unsubscribe(keys.user_channel(user_id))

    async def _go_live(self, user_id: str) -> None:
        live = self._live[user_id] = asyncio.get_running_loop().create_future()
        try:
            await self.link.subscribe(keys.user_channel(user_id))
        except LinkUnavailable as exc:
            live.set_exception(HubUnavailable(str(exc)))
            live.exception()  # later tabs may not be waiting for it
            raise HubUnavailable(str(exc)) from None
        except BaseException:
            live.cancel()
            raise
        live.set_result(None)

    async def _wait_live(self, user_id: str) -> None:
        live = self._live.get(user_id)
        if live is None:  # the first tab's subscription failed and it is on its way out
            raise HubUnavailable("subscription failed")
        try:
            await asyncio.wait_for(asyncio.shield(live), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise HubUnavailable("subscription not confirmed") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if live.cancelled() and not (task and task.cancelling()):
                raise HubUnavailable("subscription abandoned") from None
            raise

    # PubSubLink's Listener:

    def deliver(self, channel: str, data: str) -> None:
        user_id = keys.user_from_channel(channel)
        subs = self._users.get(user_id) if user_id else None
        if not subs:
            return
        try:
            event = parse_raw(data)
        except ValueError:
            reason = control_close(data)
            if reason is None:
                logger.error("dropping malformed event on %s", channel)
                return
            for sub in list(subs):
                sub.close(reason)
            return
        for sub in list(subs):
            sub.offer(event)

    def channels(self) -> list[str]:
        return [keys.user_channel(u) for u in self._users]

    def resync(self) -> None:
        for sub in list(self.subscribers):
            sub.offer(RESYNC)
