"""Redis bytes per user after N users have come and gone: `python -m bench.redis_memory`.

Starts a private Redis and one `pushskip serve` (from this checkout, or from
`--app-path DIR`, another checkout of pushskip, to measure an older version),
then plays N users through the way most chats end: two users meet, one skips
half the time, both leave, each having polled its events once. It reports
Redis's `used_memory` and key count per user right after, and again after
`--wait-s` seconds (with `--retention-s` passed on as PUSHSKIP_LOG_RETENTION_S,
to see what outlives the event logs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from pushskip.embedded import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 50
SECRET = "redis-memory-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(redis_url: str, app_path: Path, retention_s: int | None) -> tuple[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PUSHSKIP_SECRET": SECRET,
        "PUSHSKIP_RATE_PER_S": "100000",
        "PUSHSKIP_RATE_BURST": "100000",
        # All of the bench's users come from one address.
        "PUSHSKIP_SESSION_RATE_PER_MIN": "100000000",
        "PUSHSKIP_MAX_WAITING_PER_ADDRESS": "100000000",
        "PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS": "100000000",
        "PYTHONPATH": str(app_path),
    }
    if retention_s is not None:
        env["PUSHSKIP_LOG_RETENTION_S"] = str(retention_s)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pushskip", "--log-level", "WARNING", "serve", "--port", str(port)],
        env=env,
        cwd=app_path,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("app did not come up")


async def user(http: httpx.AsyncClient) -> dict[str, str]:
    body = (await http.post("/api/session")).json()
    return {"Authorization": f"Bearer {body['token']}"}


async def come_and_go(http: httpx.AsyncClient, skip: bool) -> None:
    a, b = await user(http), await user(http)
    base = "/api/simple-matching/"
    for headers in (a, b):
        (await http.post(base + "enqueue", json={}, headers=headers)).raise_for_status()
    (await http.get(base + "events?after=0", headers=b)).raise_for_status()
    if skip:
        await http.post(base + "skip", json={"requeue": False}, headers=a)
    for headers in (a, b):
        (await http.post(base + "leave", json={}, headers=headers)).raise_for_status()


async def snapshot(redis: Redis) -> dict[str, Any]:
    families: collections.Counter[str] = collections.Counter()
    async for key in redis.scan_iter(count=1000):
        families[key.split(":", 1)[0]] += 1
    info = await redis.info("memory")
    return {"used_memory": int(info["used_memory"]), "keys": dict(sorted(families.items()))}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushskip-redis-memory-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        base, proc = start_app(url, args.app_path, args.retention_s)
        redis = Redis.from_url(url, decode_responses=True)
        try:
            await redis.flushall()
            empty = await snapshot(redis)
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
                pairs = args.users // 2
                for start in range(0, pairs, CONCURRENCY):
                    batch = range(start, min(pairs, start + CONCURRENCY))
                    await asyncio.gather(*(come_and_go(http, i % 2 == 1) for i in batch))
            right_after = await snapshot(redis)
            await asyncio.sleep(args.wait_s)
            later = await snapshot(redis)
        finally:
            await redis.aclose()
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            server.close()

    def per_user(snap: dict[str, Any]) -> dict[str, Any]:
        grown = snap["used_memory"] - empty["used_memory"]
        return {
            "bytes_per_user": round(grown / args.users),
            "keys_per_user": round(sum(snap["keys"].values()) / args.users, 2),
            "keys": snap["keys"],
        }

    return {
        "users": args.users,
        "app_path": str(args.app_path),
        "retention_s": args.retention_s,
        "right_after": per_user(right_after),
        f"after_{args.wait_s:g}s": per_user(later),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--app-path", type=Path, default=REPO_ROOT, help="a pushskip checkout")
    parser.add_argument("--retention-s", type=int, default=None, help="PUSHSKIP_LOG_RETENTION_S")
    parser.add_argument("--wait-s", type=float, default=0.0, help="measure again after this")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
