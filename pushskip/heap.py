"""A serving process's heap: the cycle collector's pauses kept short while sockets pile up.

CPython's cycle collector is not incremental: collecting an older generation walks
every object in it in one go. An open socket holds ~135 objects the collector
tracks, for as long as it is open. Under the collector's own policy, 1,000 sockets
opening at once are walked again soon after in one ~100 ms collection of the middle
generation, and every full collection walks every open socket (about a second at
10,000 sockets): a stall for every user's skip.

Almost everything a socket holds is freed by its reference count when it closes
(measured: 1,000 opens and closes leave ~50 objects that only a collection frees).
So a serving process only ever collects young objects: after each collection, what
survived it leaves the collector's sight (`gc.freeze`), to be freed by its reference
count when it dies. Cyclic garbage that outlived a young collection would be kept;
a *sweep* (everything back in sight, one full collection, frozen again: a pause as
long as a full collection) frees it once the heap has doubled since the last
sweep and grown by at least `SWEEP_MIN_GROWTH` memory blocks, about 15,000 open
sockets' worth. Growth from live sockets is not garbage, so that bound is set
high: measured, 1,000 socket opens and closes leave ~50 objects of garbage, so a
process reaches it through leaks only after millions of sockets, while a
process growing by 2,000 sockets (as the benchmark's) must not stall for a sweep
that finds nothing. A heap that stays the same size (sockets opening and closing)
is never swept. The heap's size is read as Python's allocated memory blocks:
counting the frozen objects would itself walk all of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("pushskip.heap")

# A young collection runs after this many new tracked objects (Python's default: 700).
# Each collection walks the young objects still alive; those are walked once and then
# kept, so a larger threshold means fewer, longer pauses for the same total. While
# 1,000 sockets open at once, 20,000 made pauses of 6-9 ms, 5,000 makes 2-3 ms.
YOUNG_THRESHOLD = 5_000
SWEEP_GROWTH = 2.0
# Memory blocks: an open socket holds ~270, a process starts with ~260,000.
SWEEP_MIN_GROWTH = 4_000_000
SWEEP_CHECK_S = 5.0


class Heap:
    """The policy above, for the process it is settled in (see `settle`)."""

    def __init__(
        self,
        *,
        young_threshold: int = YOUNG_THRESHOLD,
        sweep_growth: float = SWEEP_GROWTH,
        sweep_min_growth: int = SWEEP_MIN_GROWTH,
    ) -> None:
        self.young_threshold = young_threshold
        self.sweep_growth = sweep_growth
        self.sweep_min_growth = sweep_min_growth
        self.sweeps = 0
        # At the last settle or sweep: the heap's memory blocks, and the objects kept.
        self.blocks_after_sweep = 0
        self.kept_after_sweep = 0
        self._check: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"Heap(young_threshold={self.young_threshold}, sweep_growth={self.sweep_growth}, "
            f"sweep_min_growth={self.sweep_min_growth})"
        )

    @property
    def settled(self) -> bool:
        return self._keep_survivors in gc.callbacks

    def settle(self) -> None:
        """Collect everything once, keep what start-up made (modules, the app, its
        clients and scripts), and from now on keep what survives each collection."""
        gc.collect()
        gc.freeze()
        self._measure()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(self.young_threshold, older, oldest)
        if not self.settled:
            gc.callbacks.append(self._keep_survivors)

    def unsettle(self) -> None:
        """Back to the collector's own policy (kept objects are in sight again)."""
        self.stop_sweeps()
        if self.settled:
            gc.callbacks.remove(self._keep_survivors)
        gc.unfreeze()

    def _keep_survivors(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector around each collection; by "stop" the survivors sit
        # in the older generations, and freezing moves them (a list splice, no walk).
        if phase == "stop":
            gc.freeze()

    def _measure(self) -> None:
        self.blocks_after_sweep = sys.getallocatedblocks()
        self.kept_after_sweep = gc.get_freeze_count()  # a walk, as the collection was

    def sweep_due(self) -> bool:
        blocks = sys.getallocatedblocks()
        return (
            blocks >= self.sweep_growth * self.blocks_after_sweep
            and blocks - self.blocks_after_sweep >= self.sweep_min_growth
        )

    def check(self) -> None:
        """One look: a sweep when the heap has grown enough."""
        if self.sweep_due():
            started = time.perf_counter()
            freed = self.sweep()
            logger.info(
                "heap swept: %d objects freed, %d kept, in %.0f ms",
                freed,
                self.kept_after_sweep,
                1000 * (time.perf_counter() - started),
            )

    def sweep(self) -> int:
        """One full collection over everything kept; how many objects it freed."""
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self._measure()
        self.sweeps += 1
        return freed

    def start_sweeps(self) -> None:
        """Check every SWEEP_CHECK_S, on the running loop, whether a sweep is due."""
        loop = asyncio.get_running_loop()

        def check() -> None:
            self._check = loop.call_later(SWEEP_CHECK_S, check)
            try:
                self.check()
            except Exception:  # a look that failed must not end the looks
                logger.exception("heap check failed")

        self.stop_sweeps()
        self._check = loop.call_later(SWEEP_CHECK_S, check)

    def stop_sweeps(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None


# One per process: the collector is.
HEAP = Heap()
