"""Stopping background tasks the same way everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_S = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until each has ended; a cancellation of the caller
    itself is not swallowed on the way.

    A task is cancelled again until it ends: on Python 3.11, a cancel that lands
    just as an awaited `asyncio.wait_for` completes is dropped (CPython gh-86296),
    and redis-py sends every command through one, so a loop could go on forever."""
    tasks = list(tasks)
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=RECANCEL_S)
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
