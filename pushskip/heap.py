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
count when it dies. Cyclic garbage that outlived a young collection would be kept,
so once the heap has doubled since the last look (and grown by at least
`SWEEP_MIN_GROWTH` memory blocks), a forked copy of the process collects
everything and counts the garbage, at the cost of a fork to the process itself;
only if it finds at least a tenth of the kept objects (and `SWEEP_MIN_GARBAGE`)
does the process *sweep* (everything back in sight, one full collection, frozen
again: a pause as long as a full collection). A heap that grows because it holds
more sockets is thus never swept, and kept garbage costs at most about as much
memory as the live heap. The heap's size is read as Python's allocated memory
blocks: counting the frozen objects would itself walk all of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from typing import Any

logger = logging.getLogger("pushskip.heap")

# A young collection runs after this many new tracked objects (Python's default: 700).
# Each collection walks the young objects still alive; those are walked once and then
# kept, so a larger threshold means fewer, longer pauses for the same total.
YOUNG_THRESHOLD = 20_000
SWEEP_GROWTH = 2.0
# Memory blocks (an open socket holds ~270; a process starts with ~260,000): a process
# holding a few hundred sockets is not swept every time they reopen.
SWEEP_MIN_GROWTH = 500_000
SWEEP_CHECK_S = 5.0
# A sweep is worth its pause when the probe finds this much garbage, and a tenth of
# what is kept.
SWEEP_MIN_GARBAGE = 50_000
SWEEP_GARBAGE_SHARE = 0.1


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
        self._probe: tuple[int, int] | None = None  # the forked probe: (pid, its pipe)
        self.probes = 0

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

    def start_probe(self) -> None:
        """Fork a copy of this process that collects everything and writes how many
        objects were garbage (it frees nothing and runs no finalizer: they are only
        counted), then exits."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the probe
            try:
                gc.set_debug(gc.DEBUG_SAVEALL)
                kept = gc.get_freeze_count()
                gc.unfreeze()
                os.write(write_fd, f"{gc.collect()} {kept}".encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        self._probe = (pid, read_fd)
        self.probes += 1

    def probe_result(self) -> tuple[int, int] | None:
        """(garbage, kept objects) as the probe found them, once it is done (None: still
        counting). A probe that failed counts as having found no garbage."""
        if self._probe is None:
            return None
        pid, read_fd = self._probe
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            return None
        self._probe = None
        try:
            garbage, kept = os.read(read_fd, 64).split()
            return int(garbage), int(kept)
        except ValueError:
            return 0, 0
        finally:
            os.close(read_fd)

    def check(self) -> None:
        """One look: a probe when the heap has grown enough, a sweep when a probe found
        enough garbage."""
        if self._probe is None:
            if self.sweep_due():
                self.start_probe()
            return
        found = self.probe_result()
        if found is None:
            return
        garbage, kept = found
        logger.debug("heap probe: %d of %d kept objects are garbage", garbage, kept)
        if garbage >= max(SWEEP_MIN_GARBAGE, SWEEP_GARBAGE_SHARE * kept):
            started = time.perf_counter()
            freed = self.sweep()
            logger.info(
                "heap swept: %d objects freed, %d kept, in %.0f ms",
                freed,
                self.kept_after_sweep,
                1000 * (time.perf_counter() - started),
            )
        else:
            self.blocks_after_sweep = sys.getallocatedblocks()  # grown, but alive

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
            self.check()
            self._check = loop.call_later(SWEEP_CHECK_S, check)

        self.stop_sweeps()
        self._check = loop.call_later(SWEEP_CHECK_S, check)

    def stop_sweeps(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None


# One per process: the collector is.
HEAP = Heap()
