"""The pairing and skip Lua scripts alone, against the private Redis, through `Store`.

Two ways each: one call at a time from one client (round-trip bound: what a
single app coroutine sees), and pipelined batches (Redis bound: what Redis
can do for all app processes together). Redis's own time per script call
comes from INFO commandstats (`cmdstat_evalsha` usec_per_call).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench.harness import Bench
from pushskip.auth import new_user_id
from pushskip.config import DEFAULT_LOG_RETENTION_S
from pushskip.replies import EnqueueReply, SkipReply
from pushskip.store import Store, enqueue_args, skip_args

BATCH = 200  # pairs per pipeline
STALE_S = 3600
# The bench's users all come from one address; no per-address cap applies to it.
ADDRESS = "bench"
MAX_WAITING = 1_000_000


async def _evalsha_stats(redis: Any) -> tuple[int, int]:
    info = await redis.info("commandstats")
    s = info.get("cmdstat_evalsha", {})
    return int(s.get("calls", 0)), int(s.get("usec", 0))


async def _pair_batch(redis: Any, sha: str, n: int) -> list[tuple[str, str]]:
    pairs = [(new_user_id(), new_user_id()) for _ in range(n)]
    async with redis.pipeline(transaction=False) as pipe:
        for a, b in pairs:
            for user in (a, b):
                args = enqueue_args(
                    user, stale_s=STALE_S, address=ADDRESS, max_waiting=MAX_WAITING
                )
                pipe.evalsha(sha, 0, *args)
        replies = await pipe.execute()
    assert all(
        EnqueueReply.decode(r).status == "matched" for r in replies[1::2]
    ), "pairing in the micro-benchmark failed"
    return pairs


async def run(bench: Bench, *, seconds: float, on_tick: Any = None) -> dict[str, Any]:
    # Store.skip logs one INFO line per skip; here that would time our terminal.
    logging.getLogger("pushskip.store").setLevel(logging.WARNING)
    redis = bench.redis
    assert redis is not None
    store = Store(
        redis,
        stale_s=STALE_S,
        cooldown_s=bench.cfg.cooldown_s,
        retention_s=DEFAULT_LOG_RETENTION_S,
        max_waiting_per_address=MAX_WAITING,
    )
    enqueue_sha = await redis.script_load(store.scripts.enqueue.source.text)
    skip_sha = await redis.script_load(store.scripts.skip.source.text)
    results: dict[str, Any] = {}

    redis_time = {"calls": 0, "usec": 0}

    async def timed_stats_start() -> tuple[int, int]:
        return await _evalsha_stats(redis)

    async def timed_stats_stop(start: tuple[int, int]) -> None:
        calls, usec = await _evalsha_stats(redis)
        redis_time["calls"] += calls - start[0]
        redis_time["usec"] += usec - start[1]

    async def measure(name: str, body: Any) -> None:
        redis_time.update(calls=0, usec=0)
        ops, elapsed = await body()
        calls, usec = redis_time["calls"], redis_time["usec"]
        results[name] = {
            "ops": ops,
            "seconds": round(elapsed, 3),
            "ops_per_s": round(ops / elapsed, 1) if elapsed else None,
            "us_per_op_client": round(1e6 * elapsed / ops, 1) if ops else None,
            "redis_us_per_script_call": round(usec / calls, 2) if calls > 0 else None,
        }
        if on_tick:
            on_tick(name)

    async def pair_sequential() -> tuple[int, float]:
        ops, t0 = 0, time.perf_counter()
        stats = await timed_stats_start()
        while time.perf_counter() - t0 < seconds:
            a, b = new_user_id(), new_user_id()
            first = await store.enqueue(a, address=ADDRESS)
            second = await store.enqueue(b, address=ADDRESS)
            assert first.status == "waiting" and second.status == "matched"
            ops += 1
        elapsed = time.perf_counter() - t0
        await timed_stats_stop(stats)
        return ops, elapsed

    async def pair_pipelined() -> tuple[int, float]:
        ops, t0 = 0, time.perf_counter()
        stats = await timed_stats_start()
        while time.perf_counter() - t0 < seconds:
            ops += len(await _pair_batch(redis, enqueue_sha, BATCH))
        elapsed = time.perf_counter() - t0
        await timed_stats_stop(stats)
        return ops, elapsed

    async def skip_sequential() -> tuple[int, float]:
        ops, spent = 0, 0.0
        while spent < seconds:
            pairs = await _pair_batch(redis, enqueue_sha, BATCH)  # untimed
            stats = await timed_stats_start()
            t0 = time.perf_counter()
            for _, b in pairs:
                result = await store.skip(b, requeue=False, address=ADDRESS)
                assert result.skipped
            spent += time.perf_counter() - t0
            await timed_stats_stop(stats)
            ops += len(pairs)
        return ops, spent

    async def skip_pipelined() -> tuple[int, float]:
        ops, spent = 0, 0.0
        while spent < seconds:
            pairs = await _pair_batch(redis, enqueue_sha, BATCH)  # untimed
            stats = await timed_stats_start()
            t0 = time.perf_counter()
            async with redis.pipeline(transaction=False) as pipe:
                for _, b in pairs:
                    args = skip_args(
                        b,
                        requeue=False,
                        stale_s=STALE_S,
                        cooldown_s=bench.cfg.cooldown_s,
                        address=ADDRESS,
                        max_waiting=MAX_WAITING,
                    )
                    pipe.evalsha(skip_sha, 0, *args)
                replies = await pipe.execute()
            spent += time.perf_counter() - t0
            await timed_stats_stop(stats)
            assert all(SkipReply.decode(r).skipped for r in replies)
            ops += len(pairs)
        return ops, spent

    await measure("pair_sequential", pair_sequential)
    await measure("pair_pipelined", pair_pipelined)
    await measure("skip_sequential", skip_sequential)
    await measure("skip_pipelined", skip_pipelined)
    results["note"] = (
        "pair = two enqueue script calls (the second pairs); skip = one skip script call "
        f"(requeue false); pipelined = batches of {BATCH} pairs"
    )
    return results


async def phase_micro(bench: Bench, results: dict[str, Any]) -> None:
    """The `micro` phase: results["micro"]."""
    if bench.redis is None:
        results["micro"] = {"skipped": "no Redis URL"}
        return
    task = bench.ui.task("micro: Lua scripts via Store", total=4)
    results["micro"] = await run(
        bench,
        seconds=bench.cfg.micro_s,
        on_tick=lambda name: bench.ui.update(task, advance=1),
    )
