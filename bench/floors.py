"""What the stack itself can do, measured the same way in the same run.

- Redis PUBLISH -> subscriber: this process publishes, the listener process's
  redis-py asyncio subscriber (the client the hub uses) receives.
- A bare Starlette app (`floorapp.py`) under the same uvicorn settings: an
  HTTP POST from this process makes the app send its body to one of the
  listener's WebSockets. Same client code, socket count and pacing as the
  pushskip WebSocket run, so pushskip / floor is the cost of pushskip itself
  (auth, Lua, Redis round trip, pub/sub hop, hub fan-out).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from bench.harness import Bench
from bench.httpc import HttpError, HttpPool
from bench.latency import paced
from bench.procs import CpuMeter, ServerProcess
from bench.stats import Sent, join, slim

CHANNEL = "pushskip-bench:floor"


async def redis_pubsub(
    bench: Bench, *, rate: float, warmup_s: float, duration_s: float, on_tick: Any = None
) -> dict[str, Any]:
    from redis.asyncio import Redis

    listener = bench.listener
    assert bench.redis_url is not None
    await listener.call("redis_sub", url=bench.redis_url, channel=CHANNEL)
    client = Redis.from_url(bench.redis_url)
    sent: dict[tuple[int, str], Sent] = {}
    counter = iter(range(10**9))

    async def fire(t_sched_ns: int, measured: bool) -> None:
        i = next(counter)
        room = f"p{i}"
        payload = f"{i} {room}"
        rec = Sent(t_sched_ns, time.monotonic_ns(), measured=measured)
        sent[(i, room)] = rec
        await client.publish(CHANNEL, payload)
        rec.t_resp_ns = time.monotonic_ns()
        rec.ok = True

    await listener.call("flush")
    meter = CpuMeter(bench.pids()).start()
    try:
        run = await paced(rate, warmup_s, duration_s, fire, rng=random.Random(7), on_tick=on_tick)
    finally:
        cpu = meter.stop()
        await client.aclose()
    await asyncio.sleep(0.3)
    got = await listener.call("flush")
    await listener.call("close_all")
    result = join(sent, got.pop("records"))
    result.update(run)
    result.update({"name": "redis-pubsub", "rate_target": rate, "cpu_pct": cpu})
    return result


async def starlette_push(
    bench: Bench,
    *,
    sockets: int,
    rate: float,
    warmup_s: float,
    duration_s: float,
    on_tick: Any = None,
) -> dict[str, Any]:
    app = ServerProcess(
        "floor-app",
        [sys.executable, "-m", "bench.floorapp", "--port", "{port}"],
        bench.child_env(),
        bench.workdir,
    )
    await app.start()
    listener = bench.listener
    pool = HttpPool(app.base, size=256)
    try:
        got = await listener.call(
            "ws_connect", url=app.ws_url, users=[[i, f"id={i}"] for i in range(sockets)]
        )
        if got["failed"]:
            raise RuntimeError(f"floor: {got['failed']} sockets failed: {got['errors']}")
        rng = random.Random(11)
        sent: dict[tuple[int, str], Sent] = {}
        counter = iter(range(10**9))
        failures = 0

        async def fire(t_sched_ns: int, measured: bool) -> None:
            nonlocal failures
            i = rng.randrange(sockets)
            room = f"floor-{next(counter)}"
            body = json.dumps(
                {
                    "type": "partner-skipped",
                    "roomName": room,
                    "skippedBy": "u_floor",
                    "seq": 1,
                    "at": 0,
                }
            ).encode()
            conn = await pool.acquire()
            raw = conn.build("POST", f"/push/{i}", body=body)
            rec = Sent(t_sched_ns, time.monotonic_ns(), measured=measured)
            sent[(i, room)] = rec
            try:
                status, _ = await conn.send(raw)
                rec.t_resp_ns = time.monotonic_ns()
                rec.ok = status == 200
            except HttpError:
                failures += 1
            finally:
                pool.release(conn)

        await listener.call("flush")
        meter = CpuMeter(bench.pids(app=app.pid)).start()
        run = await paced(rate, warmup_s, duration_s, fire, rng=random.Random(13), on_tick=on_tick)
        cpu = meter.stop()
        await asyncio.sleep(0.5)
        got = await listener.call("flush")
        result = join(sent, got.pop("records"))
        result.update(run)
        result.update(
            {
                "name": "starlette-push",
                "sockets": sockets,
                "rate_target": rate,
                "cpu_pct": cpu,
                "listener": got,
                "failures": failures,
            }
        )
        return result
    finally:
        pool.close()
        await listener.call("close_all")
        app.stop()


async def phase_floors(bench: Bench, results: dict[str, Any]) -> None:
    """The `floors` phase: results["floors"] (the Redis one only when there is a Redis URL)."""
    cfg = bench.cfg
    out: dict[str, Any] = {}
    total = cfg.latency_warmup_s + cfg.floor_duration_s
    if bench.redis_url is not None:
        task = bench.ui.task("floor: Redis PUBLISH -> subscriber", total=total)
        out["redis_pubsub"] = slim(
            await redis_pubsub(
                bench,
                rate=cfg.latency_rate,
                warmup_s=cfg.latency_warmup_s,
                duration_s=cfg.floor_duration_s,
                on_tick=lambda t: bench.ui.update(task, completed=t),
            )
        )
        bench.ui.update(task, completed=total)
    sockets = max(cfg.latency_pairs)
    task = bench.ui.task(
        f"floor: bare Starlette POST -> WebSocket ({sockets} sockets)", total=total
    )
    out["starlette_push"] = slim(
        await starlette_push(
            bench,
            sockets=sockets,
            rate=cfg.latency_rate,
            warmup_s=cfg.latency_warmup_s,
            duration_s=cfg.floor_duration_s,
            on_tick=lambda t: bench.ui.update(task, completed=t),
        )
    )
    bench.ui.update(task, completed=total)
    results["floors"] = out
