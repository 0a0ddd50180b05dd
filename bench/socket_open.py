"""Opening a socket: upgrade -> `hello`, one at a time and many at once.

- **One at a time**: `count` users, each opening `/ws?token=` and waiting for its
  `hello` (the token check, the subscription, the status read and the presence
  mark all lie on that path); the latency of each open on this process's clock,
  and the app's CPU over the batch divided by the opens. The sockets stay open
  until the batch ends, so each open also pays for a process that already holds
  the earlier ones.
- **At once**: skips flow at the latency rate over sockets (a Scenario of its
  own); in the middle of a run, a process of its own opens `burst` sockets at
  once. Skip -> notified during that run against the same load without the burst.

`python -m bench --phases socket_open` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import websockets

from bench.harness import Bench
from bench.procs import CpuMeter
from bench.stats import summarize

SEQUENTIAL = 500
BURST = 1000
BURST_PAIRS = 200


async def open_one(ws_url: str, token: str) -> tuple[float, Any]:
    """Open a socket on `ws_url` (the app's /ws) and read its hello; (seconds taken, the socket)."""
    started = time.perf_counter()
    ws = await websockets.connect(f"{ws_url}?token={token}", max_queue=None)
    first = json.loads(await ws.recv())
    taken = time.perf_counter() - started
    if first.get("type") != "hello":
        raise RuntimeError(f"the first message was not a hello: {first}")
    return taken, ws


async def one_at_a_time(bench: Bench, app: Any, count: int) -> dict[str, Any]:
    users = await bench.sessions(app.base, count, local=True)
    meter = CpuMeter({"app": app.pid}).start()
    times, sockets = [], []
    try:
        for _, token in users:
            taken, ws = await open_one(app.ws_url, token)
            times.append(taken * 1000)
            sockets.append(ws)
        cpu = meter.stop()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    app_cpu_ms = meter.seconds.get("app")
    return {
        "opens": count,
        "latency_ms": summarize(times),
        "app_cpu_ms_per_open": round(1000 * app_cpu_ms / count, 3) if app_cpu_ms else None,
        "app_cpu_pct": cpu.get("app"),
    }


async def burst_process(ws_url: str, secret: str, count: int) -> dict[str, Any]:
    """In a process of its own: `count` sockets opened at once; how long until every hello."""
    from pushskip.auth import TokenSigner, new_user_id

    signer = TokenSigner(secret, ttl_s=3600)
    tokens = [signer.sign(new_user_id()) for _ in range(count)]
    started = time.perf_counter()
    got = await asyncio.gather(*(open_one(ws_url, t) for t in tokens), return_exceptions=True)
    opened = [g for g in got if not isinstance(g, BaseException)]
    all_in_s = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for _, ws in opened), return_exceptions=True)
    return {
        "sockets": count,
        "opened": len(opened),
        "failed": count - len(opened),
        "all_hellos_s": round(all_in_s, 3),
        "open_latency_ms": summarize([1000 * t for t, _ in opened]),
    }


async def at_once(bench: Bench, app: Any, burst: int, pairs: int) -> dict[str, Any]:
    from bench.latency import Scenario

    cfg = bench.cfg
    sc = Scenario(
        bench,
        name="socket-open-burst",
        base=app.base,
        ws_url=app.ws_url,
        pairs=pairs,
        transport="ws",
        app_pid=app.pid,
        seed=19,
        skip_via="ws",
    )
    duration = max(3.0, cfg.latency_duration_s)
    await sc.setup()
    try:
        quiet = await sc.run(cfg.latency_rate, cfg.latency_warmup_s, duration)

        async def burst_midway() -> dict[str, Any]:
            await asyncio.sleep(cfg.latency_warmup_s + duration / 3)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.socket_open",
                "--ws-url",
                app.ws_url,
                "--count",
                str(burst),
                stdout=asyncio.subprocess.PIPE,
                env={**bench.child_env(), "PUSHSKIP_SECRET": bench.secret},
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the burst process failed ({proc.returncode})")
            return dict(json.loads(out.decode().strip().splitlines()[-1]))

        burst_task = asyncio.create_task(burst_midway())
        during = await sc.run(cfg.latency_rate, cfg.latency_warmup_s, duration)
        burst_result = await burst_task
    finally:
        await sc.teardown()
    return {
        "burst": burst_result,
        "pairs": pairs,
        "rate": cfg.latency_rate,
        "duration_s": duration,
        "skip_notified_ms_without": summarize(quiet.pop("_latencies", [])),
        "skip_notified_ms_during": summarize(during.pop("_latencies", [])),
    }


async def phase_socket_open(bench: Bench, results: dict[str, Any]) -> None:
    """The `socket_open` phase: results["socket_open"]."""
    if bench.args.url:
        results["socket_open"] = {"skipped": "needs the apps the bench starts (no --url)"}
        return
    quick = bench.cfg.quick
    app: Any = await bench.start_app("app-socket-open")
    try:
        task = bench.ui.task("socket open: upgrade -> hello, one at a time and at once", total=2)
        single = await one_at_a_time(bench, app, 100 if quick else SEQUENTIAL)
        bench.ui.update(task, advance=1)
        burst = await at_once(bench, app, 200 if quick else BURST, 50 if quick else BURST_PAIRS)
        bench.ui.update(task, advance=1)
    finally:
        app.stop()
        bench.apps.remove(app)
    results["socket_open"] = {"one_at_a_time": single, "at_once": burst}


def main(argv: list[str] | None = None) -> int:
    """The burst's own process: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.socket_open")
    parser.add_argument("--ws-url", required=True)
    parser.add_argument("--count", type=int, default=BURST)
    args = parser.parse_args(argv)
    result = asyncio.run(burst_process(args.ws_url, os.environ["PUSHSKIP_SECRET"], args.count))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
