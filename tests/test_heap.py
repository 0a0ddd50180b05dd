"""heap.py: a serving process keeps what survives a young collection out of the
collector's sight, frees it by its reference count, and sweeps kept cyclic garbage."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx

from tests.helpers import app_process

# Run in a process of its own: the policy changes the collector for the whole process.
POLICY = textwrap.dedent(
    """
    import gc
    from pushskip.heap import Heap

    class Node:
        pass

    def cycle():
        node = Node()
        node.me = node
        return node

    heap = Heap(young_threshold=1000, sweep_growth=2.0, sweep_min_growth=5000)
    heap.settle()
    base = gc.get_freeze_count()
    assert gc.get_threshold()[0] == 1000

    held = [Node() for _ in range(4000)]
    gc.collect(0)  # a young collection: its survivors are kept
    assert gc.get_count()[1] == 0 and gc.get_freeze_count() >= base + 4000, gc.get_count()
    del held  # freed by their reference counts, kept or not
    assert gc.get_freeze_count() < base + 100, (gc.get_freeze_count(), base)

    blocks = heap.blocks_after_sweep
    assert heap.kept_after_sweep == base and blocks > base
    cycles = [cycle() for _ in range(blocks)]  # the heap doubles (a block or more each)
    gc.collect(0)
    del cycles  # garbage now, but kept: young collections do not see it
    assert gc.collect(0) == 0
    assert gc.get_freeze_count() >= base + blocks and heap.sweep_due()
    heap.check()
    assert heap.sweeps == 1
    assert heap.kept_after_sweep < base + 100 and not heap.sweep_due()

    heap.sweep_min_growth = 10 * heap.blocks_after_sweep
    more = [cycle() for _ in range(2 * heap.blocks_after_sweep)]
    gc.collect(0)
    del more
    assert not heap.sweep_due()  # doubled, but under sweep_min_growth: not worth a look
    heap.unsettle()
    assert gc.get_freeze_count() == 0 and gc.collect() >= 2 * blocks
    print("ok")
    """
)


def test_young_survivors_are_kept_freed_by_their_count_and_swept_when_garbage() -> None:
    """After settling, what survives a young collection leaves the collector's sight (no
    older generation grows), is freed by its reference count, and cyclic garbage among it
    is freed by a sweep once the heap has doubled (not before it grew enough)."""
    done = subprocess.run(
        [sys.executable, "-c", POLICY], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_a_serving_process_settles_its_heap(redis_server) -> None:
    """`pushskip serve` settles its heap after start-up: /metrics shows what it keeps."""
    with app_process(redis_server.url) as (base, _):
        async with httpx.AsyncClient(base_url=base) as http:
            text = (await http.get("/metrics")).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("pushskip_heap_")
    }
    assert values["pushskip_heap_kept_objects"] > 10_000  # modules, the app, its clients
    assert values["pushskip_heap_sweeps"] == 0
