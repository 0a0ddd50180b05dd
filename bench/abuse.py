"""What a hostile client costs other users: `python -m bench.abuse`.

Starts a private Redis and one `pushskip serve`, then measures, on loopback:

- other users' skip -> partner-notified latency (p50/p99 over `--skips` skips,
  one at a time) while idle, and while one session floods pings over its
  socket as fast as it can, reconnecting each time it is closed;
- the app's RSS before and after 20 clients each send one 16 MB WebSocket frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from pushskip.embedded import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pushskip", "--log-level", "WARNING", "serve"]
    return subprocess.Popen([*argv, "--port", str(port)], env=env, cwd=REPO_ROOT)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def session(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    body = (await http.post("/api/session")).json()
    return body["token"], {"Authorization": f"Bearer {body['token']}"}


async def skip_latencies(http: httpx.AsyncClient, ws_base: str, count: int) -> list[float]:
    """Pair two users, skip, time until the partner's socket hears it; `count` times."""
    base = "/api/simple-matching/"
    result = []
    for _ in range(count):
        (_, a), (token_b, b) = await session(http), await session(http)
        await http.post(base + "enqueue", json={}, headers=a)
        await http.post(base + "enqueue", json={}, headers=b)
        async with websockets.connect(f"{ws_base}/ws?token={token_b}") as ws:
            await ws.recv()  # hello
            started = time.perf_counter()
            await http.post(base + "skip", json={"requeue": False}, headers=a)
            while json.loads(await ws.recv())["type"] != "partner-skipped":
                pass
            result.append((time.perf_counter() - started) * 1000)
    return result


async def flood(ws_base: str, token: str, stop: asyncio.Event) -> int:
    """Pings as fast as the socket takes them, reconnecting when closed; pings sent."""
    sent = 0
    while not stop.is_set():
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            async with websockets.connect(f"{ws_base}/ws?token={token}") as ws:
                while not stop.is_set():
                    await ws.send('{"type":"ping"}')
                    sent += 1
                    if sent % 100 == 0:
                        await asyncio.sleep(0)
    return sent


async def big_frames(ws_base: str, http: httpx.AsyncClient, count: int) -> list[int | None]:
    codes: list[int | None] = []
    for _ in range(count):
        token, _ = await session(http)
        try:
            async with websockets.connect(
                f"{ws_base}/ws?token={token}", max_size=None, open_timeout=10
            ) as ws:
                await ws.recv()
                await ws.send("x" * 16_000_000)
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as exc:
            codes.append(exc.rcvd.code if exc.rcvd else None)
    return codes


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushskip-abuse-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": url,
            "PUSHSKIP_SECRET": "abuse-bench",
            # The measuring users all come from 127.0.0.1; the flooder's limits stay.
            "PUSHSKIP_SESSION_RATE_PER_MIN": "100000",
            "PUSHSKIP_RATE_PER_S": "100000",
            "PUSHSKIP_RATE_BURST": "100000",
        }
        proc = start_app(env, port)
        base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                for _ in range(200):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
                idle = await skip_latencies(http, ws_base, args.skips)
                token, _ = await session(http)
                stop = asyncio.Event()
                flooder = asyncio.create_task(flood(ws_base, token, stop))
                await asyncio.sleep(0.5)
                flooded = await skip_latencies(http, ws_base, args.skips)
                stop.set()
                pings = await flooder
                before = rss_kib(proc.pid)
                codes = await big_frames(ws_base, http, 20)
                after = rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            server.close()
    return {
        "skip_notified_idle": stats(idle),
        "skip_notified_during_ping_flood": stats(flooded),
        "flood_pings_sent": pings,
        "rss_kib_before_big_frames": before,
        "rss_kib_after_20_frames_of_16_mb": after,
        "big_frame_close_codes": sorted({c for c in codes if c is not None}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--skips", type=int, default=100)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
