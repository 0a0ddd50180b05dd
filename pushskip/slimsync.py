"""An asyncio.Queue and an asyncio.Event for what every open socket holds.

uvicorn gives each WebSocket connection an `asyncio.Queue` (its incoming
messages) and an `asyncio.Event` (whether the transport is writable). Each
allocates `collections.deque`s up front, four between them, and a deque is
~760 bytes before it holds anything: ~3 KiB of an idle socket's ~30. These
keep their waiters in a list made when someone first waits, and cover what
uvicorn uses of the originals (`server.ClosingWebSocketProtocol` swaps them in).
"""

from __future__ import annotations

import asyncio
from typing import Any


def _wake(waiters: list[asyncio.Future[None]] | None) -> None:
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if waiter in waiters:  # cancelled, or woken by another list
            waiters.remove(waiter)


class SlimEvent:
    """asyncio.Event's set / clear / is_set / wait."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, None
            _wake(waiters)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        if self._waiters is None:
            self._waiters = []
        await _wait(self._waiters)
        return True


class SlimQueue:
    """An unbounded asyncio.Queue's put_nowait / get / empty / qsize, first in first out.

    Its items are in a list: a connection's queue holds at most the messages of one
    parse slice (ClosingWebSocketProtocol parses no more until the app has taken them)."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._getters:
            getters, self._getters = self._getters, None
            _wake(getters)

    async def get(self) -> Any:
        while not self._items:
            if self._getters is None:
                self._getters = []
            await _wait(self._getters)
        return self._items.pop(0)
