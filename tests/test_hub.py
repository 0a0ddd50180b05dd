"""The hub's two parts on their own: `Subscriber` (pure) and `PubSubLink` (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from pushskip import closing, link
from pushskip.app import redis_clients
from pushskip.embedded import EmbeddedRedis
from pushskip.events import RawEvent
from pushskip.hub import PONG, RESYNC, Subscriber
from pushskip.link import LinkUnavailable, PubSubLink
from pushskip.metrics import Metrics
from tests.helpers import make_settings

RACE_ROUNDS = 50

# --- Subscriber ------------------------------------------------------------------------


def event(seq: int) -> RawEvent:
    return RawEvent(seq, f'{{"type":"x","seq":{seq}}}', None)


async def test_subscriber_hands_out_items_in_order() -> None:
    """Offered events come out of next() oldest first; a due pong comes before them."""
    sub = Subscriber("u", limit=8, slow_send_s=1.0)
    for item in (event(1), PONG, event(2)):
        sub.offer(item)
    assert [await sub.next() for _ in range(3)] == [PONG, event(1), event(2)]


async def test_a_reply_follows_the_events_queued_before_it_and_survives_a_full_mailbox() -> None:
    """A reply comes after events queued before it, and a mailbox collapsing to RESYNC does
    not drop it."""
    sub = Subscriber("u", limit=2, slow_send_s=1.0)
    sub.offer(event(1))
    sub.reply('{"type":"reply","id":"a"}')
    for seq in (2, 3):
        sub.offer(event(seq))  # the second collapses the mailbox to RESYNC
    assert await sub.next() == RESYNC
    assert await sub.next() == '{"type":"reply","id":"a"}'
    assert await sub.next(timeout=0.01) is None


async def test_a_burst_of_pings_is_one_pong_and_no_resync() -> None:
    """10,000 pings take no queue space: one pong is due, events keep their places, and the
    mailbox never collapses to a log read (RESYNC)."""
    sub = Subscriber("u", limit=4, slow_send_s=1.0)
    sub.offer(event(1))
    for _ in range(10_000):
        sub.offer(PONG)
    sub.offer(event(2))
    assert [await sub.next() for _ in range(3)] == [PONG, event(1), event(2)]
    assert await sub.next(timeout=0.01) is None


async def test_subscriber_next_waits_for_an_offer() -> None:
    """A writer waiting in next() is woken by the next offer."""
    sub = Subscriber("u", limit=8, slow_send_s=1.0)
    waiting = asyncio.create_task(sub.next())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    sub.offer(event(1))
    assert await asyncio.wait_for(waiting, 1) == event(1)


async def test_full_mailbox_of_a_busy_writer_collapses_to_resync() -> None:
    """Past the limit, while no send is stuck, the queue becomes one RESYNC marker."""
    sub = Subscriber("u", limit=4, slow_send_s=1.0)
    for seq in range(1, 6):
        sub.offer(event(seq))
    assert await sub.next() == RESYNC
    sub.offer(event(6))
    assert await sub.next() == event(6)
    assert sub.close_reason is None


async def test_full_mailbox_behind_a_stuck_send_closes_as_slow_reader() -> None:
    """Past the limit while a send has been stuck longer than slow_send_s: SLOW_READER."""
    sub = Subscriber("u", limit=2, slow_send_s=0.05)
    sub.sending_since = asyncio.get_running_loop().time() - 0.1
    for seq in range(1, 4):
        sub.offer(event(seq))
    assert sub.close_reason is closing.SLOW_READER
    sub.offer(event(4))  # ignored once closing
    assert await sub.next() == event(1)
    assert await sub.next() == event(2)
    assert await sub.next() is None


async def test_close_wakes_a_waiting_writer_and_keeps_the_first_reason() -> None:
    """close() wakes next() with None; a later close does not change the reason."""
    sub = Subscriber("u", limit=8, slow_send_s=1.0)
    waiting = asyncio.create_task(sub.next())
    await asyncio.sleep(0.01)
    sub.close(closing.SHUTDOWN)
    sub.close(closing.SLOW_READER)
    assert await asyncio.wait_for(waiting, 1) is None
    assert sub.close_reason is closing.SHUTDOWN


# --- PubSubLink ------------------------------------------------------------------------


class Recorder:
    """A Listener that remembers what it was given."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.messages: list[tuple[str, str]] = []
        self.resyncs = 0
        self.arrived = asyncio.Event()

    def deliver(self, channel: str, data: str) -> None:
        self.messages.append((channel, data))
        self.arrived.set()

    def channels(self) -> list[str]:
        return sorted(self.wanted)

    def resync(self) -> None:
        self.resyncs += 1

    async def wait_for(self, channel: str, data: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while (channel, data) not in self.messages:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def running_link(url: str) -> AsyncIterator[tuple[PubSubLink, Recorder, Redis]]:
    commands, pubsub = redis_clients(make_settings(url))
    recorder = Recorder()
    the_link = PubSubLink(commands, pubsub, Metrics(), watchdog_interval_s=30.0)
    await the_link.start(recorder)
    try:
        yield the_link, recorder, commands
    finally:
        await the_link.stop()
        await pubsub.aclose()
        await commands.aclose()


async def test_subscribe_returns_once_redis_hears_the_channel(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """After subscribe() returns, a PUBLISH to the channel reaches the listener (x50, at once)."""
    async with running_link(redis_server.url) as (the_link, recorder, _):
        channels = [f"test:link:{i}" for i in range(RACE_ROUNDS)]
        recorder.wanted.update(channels)
        await asyncio.gather(*(the_link.subscribe(c) for c in channels))
        for c in channels:
            assert await redis.publish(c, "hi") == 1, c
        for c in channels:
            await recorder.wait_for(c, "hi")


async def test_a_slow_subscribe_holds_up_no_other(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """While one channel's SUBSCRIBE is stuck on its way out, others are confirmed at once."""
    async with running_link(redis_server.url) as (the_link, _recorder, _):
        pubsub = the_link._pubsub
        assert pubsub is not None
        real_subscribe = pubsub.subscribe
        release = asyncio.Event()

        async def slow_for_one(*channels: str) -> Any:
            if "test:slow" in channels:
                await release.wait()
            return await real_subscribe(*channels)

        pubsub.subscribe = slow_for_one  # type: ignore[method-assign]
        slow = asyncio.create_task(the_link.subscribe("test:slow"))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(the_link.subscribe("test:fast"), 1.0)
        assert not slow.done()
        release.set()
        await asyncio.wait_for(slow, 2.0)
        assert await redis.publish("test:slow", "late") == 1


async def test_unsubscribe_then_subscribe_again_is_confirmed_in_order(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """SUBSCRIBE / UNSUBSCRIBE / SUBSCRIBE of one channel, back to back: the last
    subscribe() returns only when the channel is live again (x50)."""
    async with running_link(redis_server.url) as (the_link, recorder, _):
        for i in range(RACE_ROUNDS):
            first = asyncio.create_task(the_link.subscribe("test:flap"))
            await asyncio.sleep(0)
            await the_link.unsubscribe("test:flap")
            await the_link.subscribe("test:flap")
            await first
            assert await redis.publish("test:flap", str(i)) == 1, i
            await recorder.wait_for("test:flap", str(i))
            await the_link.unsubscribe("test:flap")


async def test_killed_connection_is_rebuilt_and_resynced(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """CLIENT KILL of the pub/sub connection: the link reconnects, subscribes what the
    listener names, and calls resync() once per rebuild."""
    async with running_link(redis_server.url) as (the_link, recorder, _):
        recorder.wanted.add("test:kept")
        await the_link.subscribe("test:kept")
        for round_ in range(1, 4):
            assert await redis.client_kill_filter(_type="pubsub") >= 1
            async with asyncio.timeout(5):
                while recorder.resyncs < round_ or not the_link.ready:
                    await asyncio.sleep(0.01)
            assert await redis.publish("test:kept", f"r{round_}") == 1
            await recorder.wait_for("test:kept", f"r{round_}")
        assert recorder.resyncs == 3


async def test_subscribe_fails_alone_while_redis_is_down(
    own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis away, subscribe() raises LinkUnavailable after its timeout; when Redis is
    back the link reconnects by itself and subscribe() works again."""
    monkeypatch.setattr(link, "SUBSCRIBE_TIMEOUT_S", 0.5)
    async with running_link(own_redis.url) as (the_link, recorder, commands):
        own_redis.stop()
        async with asyncio.timeout(5):
            while the_link.ready:
                await asyncio.sleep(0.01)
        with pytest.raises(LinkUnavailable):
            await the_link.subscribe("test:down")
        own_redis.start()
        async with asyncio.timeout(10):
            while not the_link.ready:
                await asyncio.sleep(0.02)
        recorder.wanted.add("test:up")
        await the_link.subscribe("test:up")
        assert await commands.publish("test:up", "back") == 1
        await recorder.wait_for("test:up", "back")
        assert recorder.resyncs == 1


async def test_channel_of_a_user_who_left_during_a_reconnect_is_dropped(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A channel the listener still named when the rebuilt connection subscribed it, but no
    longer names once Redis confirmed it (its last socket left meanwhile), is unsubscribed
    before the link is ready again."""
    async with running_link(redis_server.url) as (the_link, recorder, _):
        recorder.wanted.add("test:leaving")
        await the_link.subscribe("test:leaving")
        asked = 0
        real_channels = recorder.channels

        def channels_then_gone() -> list[str]:
            nonlocal asked
            asked += 1
            if asked > 1:
                recorder.wanted.discard("test:leaving")
            return real_channels()

        recorder.channels = channels_then_gone  # type: ignore[method-assign]
        assert await redis.client_kill_filter(_type="pubsub") >= 1
        async with asyncio.timeout(5):
            while recorder.resyncs < 1:
                await asyncio.sleep(0.01)
        assert asked >= 2
        assert await redis.pubsub_numsub("test:leaving") == [("test:leaving", 0)]
