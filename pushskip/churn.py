"""Connection churn served in turns: sockets coming and going wait behind the traffic of
the sockets already open.

A burst of connections (every client of a restarted process coming back at once, or
leaving at once) is work the event loop does in the same turns as everyone
else's skips. Left alone, the loop parses every new connection's request (and builds
its WebSocket handshake and task) in whichever turn its bytes arrived: 1,000 sockets
opening at once made turns of 60-110 ms, and 1,000 closing at once turns of 16-32 ms,
and other users' skips waited behind each one.

Here a new connection's first read (the request, or the WebSocket upgrade) and a
socket's close frame from its peer are *churn*: each turn of the loop runs churn for at
most `budget_s`, in arrival order, and what is left waits (its connection not read
meanwhile) for the next turn. A turn always runs at least one, so churn never starves;
when the loop has nothing else to do, turns follow each other at once and churn runs
at full speed. What follows from a step (the app's task for a new socket, the cleanup
of a closed one) runs in later turns and is bounded in turn by how many steps a turn
admits.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

# The share of a loop turn that churn may take. A new WebSocket's first read costs
# ~0.08 ms here (a close frame ~0.02 ms), so a turn admits a few of them. With 1,000
# sockets opening at once, other users' skip -> notified p99 was 15-19 ms at 0.5 ms
# and 9-12 ms at 0.25 ms (with 4 sockets opening at once, services.py).
CHURN_BUDGET_S = 0.00025

Step = Callable[[bytes], None]


def is_close_frame(data: bytes) -> bool:
    """Whether `data` (from a WebSocket peer) starts with a close frame (opcode 8)."""
    return len(data) >= 2 and data[0] & 0x0F == 0x08


class ChurnTurns:
    """Churn steps run within `budget_s` per turn of the event loop (see the module)."""

    __slots__ = ("_queue", "_spent", "_turn_marked", "budget_s")

    def __init__(self, budget_s: float = CHURN_BUDGET_S) -> None:
        self.budget_s = budget_s
        self._queue: collections.deque[tuple[asyncio.Transport, Step, bytes]] = (
            collections.deque()
        )
        self._spent = 0.0
        self._turn_marked = False

    def __repr__(self) -> str:
        return f"ChurnTurns(budget_s={self.budget_s}, waiting={len(self._queue)})"

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def run(self, transport: asyncio.Transport, step: Step, data: bytes) -> bool:
        """`step(data)` now (True), or, when this turn's share is spent (or other steps
        wait), in a later turn (False): `transport` is not read until then. A step whose
        transport closed meanwhile is dropped."""
        if self._queue or self._spent >= self.budget_s:
            transport.pause_reading()
            self._queue.append((transport, step, data))
            self._mark_turn()
            return False
        self._run(step, data)
        return True

    def _run(self, step: Step, data: bytes) -> None:
        started = time.perf_counter()
        try:
            step(data)
        finally:
            self._spent += time.perf_counter() - started
            self._mark_turn()

    def _mark_turn(self) -> None:
        # The turn ends when the callbacks already scheduled have run: the share is
        # renewed there, and the steps that wait get theirs first.
        if not self._turn_marked:
            self._turn_marked = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_marked = False
        self._spent = 0.0
        queue = self._queue
        while queue:  # at least one step a turn, whatever the share
            transport, step, data = queue.popleft()
            if transport.is_closing():
                continue
            transport.resume_reading()
            try:
                self._run(step, data)
            except Exception as exc:
                # As a transport does when its protocol's data_received raises: the
                # connection is dropped and the error reported, and the turn goes on.
                transport.abort()
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "a connection's churn step failed", "exception": exc}
                )
            if self._spent >= self.budget_s:
                break
        if queue:
            self._mark_turn()
