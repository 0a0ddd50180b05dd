"""OffloadedTarget: deliveries run in a child process, which the serving process outlives."""

from __future__ import annotations

import asyncio
import functools
import os
import signal

from pushskip.offload import (
    CHILD_NICENESS,
    STOP_TIMEOUT_S,
    ChildWorker,
    OffloadedTarget,
    OffloadFailed,
)
from pushskip.outbox import Entry


class ChildTarget:
    """Delivers in the child: done when `data["ok"]` and it runs in another process than
    `parent`, after `data["wait_s"]`."""

    name = "test"
    concurrency = 8

    def __init__(self, parent: int) -> None:
        self.parent = parent

    async def deliver(self, entry: Entry) -> bool:
        await asyncio.sleep(float(entry.data.get("wait_s", 0)))
        return bool(entry.data.get("ok")) and os.getpid() != self.parent

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def offloaded(**kw: float) -> OffloadedTarget:
    return OffloadedTarget(
        functools.partial(ChildTarget, os.getpid()), name="test", concurrency=8, **kw
    )


def entry(n: int, **data: object) -> Entry:
    return Entry(f"e{n}", dict(data), 1, 0)


async def test_deliveries_run_in_a_lower_priority_child_and_answer_each_entry() -> None:
    target = offloaded()
    try:
        await target.start()
        pid = target.pid
        assert pid is not None and pid != os.getpid()
        # Later entries answer first: each answer must find its own delivery.
        got = await asyncio.gather(
            *(target.deliver(entry(n, ok=n % 3 != 0, wait_s=(30 - n) / 100)) for n in range(30))
        )
        assert got == [n % 3 != 0 for n in range(30)]
        assert target.pid == pid  # one child for all of them
        nice = os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0)
        assert nice == CHILD_NICENESS
    finally:
        loop = asyncio.get_running_loop()
        closing = loop.time()
        await target.aclose()
    # It left when its stream ended, well before it would have been killed.
    assert loop.time() - closing < STOP_TIMEOUT_S - 1
    assert target.pid is None
    assert not _alive(pid)  # stopped, and reaped


async def test_closing_a_target_whose_child_never_started_is_quiet() -> None:
    """aclose() before any child ran (none was needed yet, or none could start) returns
    cleanly, and a delivery after it fails without starting one."""
    target = offloaded()
    await target.aclose()
    assert await target.deliver(entry(1, ok=True)) is False
    assert target.pid is None


async def test_a_dead_child_fails_its_deliveries_and_is_started_again() -> None:
    target = offloaded()
    try:
        assert await target.deliver(entry(0, ok=True))
        first = target.pid
        assert first is not None
        under_way = [
            asyncio.create_task(target.deliver(entry(n, ok=True, wait_s=30))) for n in (1, 2)
        ]
        await asyncio.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.gather(*under_way), 10) == [False, False]
        # Started again at the next delivery (which waits out the restart pause).
        assert await target.deliver(entry(3, ok=True))
        assert target.pid not in (None, first)
    finally:
        await target.aclose()


async def test_a_child_that_stops_answering_is_replaced() -> None:
    target = offloaded(answer_timeout_s=1.0)
    try:
        await target.start()
        hung = target.pid
        assert not await target.deliver(entry(0, ok=True, wait_s=30))  # no answer in 1 s
        assert await target.deliver(entry(1, ok=True))
        assert target.pid not in (None, hung)
        assert hung is not None
        for _ in range(50):  # killed, then reaped by the loop's child watcher
            if not _alive(hung):
                break
            await asyncio.sleep(0.1)
        assert not _alive(hung)
    finally:
        await target.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Doubler:
    """Answers in line (handle_now): twice the number, and fails on a negative one."""

    def handle_now(self, n: int) -> int:
        if n < 0:
            raise ValueError(f"negative: {n}")
        return 2 * n

    async def handle(self, n: int) -> int:
        return self.handle_now(n)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_calls_answered_in_line_each_get_their_own_answer_or_failure() -> None:
    """A burst of calls in one turn, answered by handle_now several per write: each caller
    gets its own answer, and one that raised fails alone."""
    worker = ChildWorker(Doubler, name="doubler")
    try:
        await worker.start()
        numbers = [n if n % 7 else -n for n in range(1, 41)]
        got = await asyncio.gather(*(worker.call(n) for n in numbers), return_exceptions=True)
        for n, answer in zip(numbers, got, strict=True):
            if n < 0:
                assert isinstance(answer, OffloadFailed) and "negative" in str(answer)
            else:
                assert answer == 2 * n
        assert await worker.call(5) == 10  # the child lives on
    finally:
        await worker.aclose()
