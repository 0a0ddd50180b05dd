"""SlimQueue and SlimEvent behave as the asyncio.Queue and asyncio.Event they replace in
every socket's protocol (server.ClosingWebSocketProtocol)."""

from __future__ import annotations

import asyncio

from pushskip.slimsync import SlimEvent, SlimQueue


async def test_the_queue_hands_items_out_in_order_and_wakes_a_waiting_getter() -> None:
    queue = SlimQueue()
    assert queue.empty() and queue.qsize() == 0
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await getter == "a"
    assert queue.qsize() == 1 and not queue.empty()
    assert await queue.get() == "b"
    assert queue.empty()


async def test_a_cancelled_get_leaves_nothing_behind_and_loses_no_item() -> None:
    queue = SlimQueue()
    cancelled = asyncio.create_task(queue.get())
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    queue.put_nowait(1)
    assert await waiting == 1
    for _ in range(100):  # cancelled waits do not pile up
        task = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
    assert not queue._getters
    queue.put_nowait(2)
    assert await queue.get() == 2


async def test_the_event_wakes_every_waiter_and_can_be_cleared() -> None:
    event = SlimEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await event.wait() is True  # set: returns at once
    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    late.cancel()
    await asyncio.sleep(0)
    assert not event._waiters
    event.set()
    assert event.is_set()
