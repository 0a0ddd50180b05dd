"""What hostile clients cost everyone else: `python -m bench.abuse` (or the `abuse` phase of
`python -m bench`, which puts the figures in docs/benchmarks.md).

Starts a private Redis and one `pushskip serve` (with its default limits, and
127.0.0.1 trusted to name client addresses in X-Forwarded-For), then measures,
on loopback:

- **ping flood, reading**: other users' skip -> partner-notified latency idle,
  and while one session floods pings over its socket as fast as it can,
  reconnecting (and reading) each time it is closed;
- **ping flood, never reading**: for `--flood-s` seconds a client floods pings
  at full speed and never reads a byte, reconnecting whenever it is dropped:
  `/healthz` latency and other users' skip -> notified meanwhile, the app's CPU
  during the flood and how soon after the last close it is back under 10% of a
  core;
- **16 MB frames**: the app's RSS before and after 20 clients each send one;
- **churning sessions**: 200 sessions from one address re-enqueue as fast as
  they can and leave whenever two of them meet (`bench.churn`, a process of its
  own); two real users from two other addresses, each skipping every bot they
  meet, look for each other, 5 times: how long until they meet, and the 429s
  the attacker's address got;
- **honest NAT**: 50 users behind one address and 10 from others, each
  skipping a few seconds (2-6 s) after every match, for `--crowd-s` seconds:
  how long each group waits from entering the queue to its next match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets

from bench.procs import free_port
from pushskip.embedded import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = "/api/simple-matching/"
BOT_ADDRESS = "192.0.2.66"
REAL_ADDRESSES = ("198.51.100.7", "203.0.113.9")
NAT_ADDRESS = "198.51.100.200"
PING = b'{"type":"ping"}'


def app_env(redis_url: str) -> dict[str, str]:
    """The app as deployed behind a proxy, its limits at their defaults."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "PUSHSKIP_SECRET": "abuse-bench",
        "PUSHSKIP_TRUSTED_PROXIES": "127.0.0.1",
        # Every measuring client makes its sessions from one place; not what is measured.
        "PUSHSKIP_SESSION_RATE_PER_MIN": "100000",
        "PUSHSKIP_RATE_PER_S": "100000",
        "PUSHSKIP_RATE_BURST": "100000",
        "PYTHONPATH": str(REPO_ROOT),
    }


def start_app(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pushskip", "--log-level", "WARNING", "serve"]
    return subprocess.Popen([*argv, "--port", str(port)], env=env, cwd=REPO_ROOT)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def session(
    http: httpx.AsyncClient, address: str | None = None
) -> tuple[str, dict[str, str]]:
    headers = {"X-Forwarded-For": address} if address else {}
    body = (await http.post("/api/session", headers=headers)).json()
    auth = {"Authorization": f"Bearer {body['token']}", **headers}
    return body["token"], auth


async def skip_latencies(http: httpx.AsyncClient, ws_base: str, count: int) -> list[float]:
    """Pair two users, skip, time until the partner's socket hears it; `count` times."""
    result = []
    for _ in range(count):
        (_, a), (token_b, b) = await session(http), await session(http)
        await http.post(BASE + "enqueue", json={}, headers=a)
        await http.post(BASE + "enqueue", json={}, headers=b)
        async with websockets.connect(f"{ws_base}/ws?token={token_b}") as ws:
            await ws.recv()  # hello
            started = time.perf_counter()
            await http.post(BASE + "skip", json={"requeue": False}, headers=a)
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


def raw_websocket(base: str, token: str) -> tuple[socket.socket, bytes]:
    """A WebSocket opened by hand: the handshake, then nothing more read (a client that
    never reads what comes back). The socket, and the answer up to the end of its headers
    and not a byte further (shorter if the server closed first)."""
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        byte = sock.recv(1)
        if not byte:
            break
        answer += byte
    return sock, answer


def masked_frame(payload: bytes) -> bytes:
    """One masked text frame (a client's), payload under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def never_reading_flood(base: str, token: str, seconds: float) -> dict[str, Any]:
    """In a thread: open a socket by hand (read up to the end of the 101, never a byte more),
    send pings as fast as TCP takes them until dropped, then again, for `seconds`."""
    chunk = masked_frame(PING) * 4096
    deadline = time.monotonic() + seconds
    sent = connections = 0
    last_drop = None
    while time.monotonic() < deadline:
        sock, _ = raw_websocket(base, token)
        connections += 1
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while time.monotonic() < deadline:
                sent += sock.send(chunk)
        except (OSError, TimeoutError):
            last_drop = time.monotonic()
        finally:
            sock.close()
    return {"bytes_sent": sent, "connections": connections, "last_drop": last_drop}


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


async def healthz_probe(http: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    got = []
    while not stop.is_set():
        started = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await http.get("/healthz")
            got.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return got


async def never_reading_case(
    http: httpx.AsyncClient, base: str, ws_base: str, pid: int, seconds: float, skips: int
) -> dict[str, Any]:
    token, _ = await session(http)
    stop = asyncio.Event()
    cpu_samples: list[tuple[float, float]] = []

    async def sample_cpu() -> None:
        last_t, last_c = time.monotonic(), cpu_seconds(pid)
        while not stop.is_set() or time.monotonic() - last_t < 3:
            await asyncio.sleep(0.1)
            t, c = time.monotonic(), cpu_seconds(pid)
            cpu_samples.append((t, 100 * (c - last_c) / (t - last_t)))
            last_t, last_c = t, c
            if stop.is_set() and len(cpu_samples) > 400:
                return

    sampler = asyncio.create_task(sample_cpu())
    flooder = asyncio.create_task(asyncio.to_thread(never_reading_flood, base, token, seconds))
    probe = asyncio.create_task(healthz_probe(http, stop))
    await asyncio.sleep(0.5)
    during = await skip_latencies(http, ws_base, skips)
    result = await flooder
    stop.set()
    health = await probe
    await asyncio.sleep(3.0)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    ended = result["last_drop"] or time.monotonic()
    during_cpu = [pct for t, pct in cpu_samples if t < ended]
    after = [(t - ended, pct) for t, pct in cpu_samples if t >= ended]
    quiet_after = next((round(dt, 2) for dt, pct in after if pct < 10), None)
    return {
        "flood_s": seconds,
        "bytes_sent": result["bytes_sent"],
        "connections": result["connections"],
        "healthz_during": stats(health),
        "skip_notified_during": stats(during),
        "app_cpu_pct_during_mean": round(statistics.mean(during_cpu), 1) if during_cpu else None,
        "app_cpu_back_under_10pct_after_s": quiet_after,
    }


async def meet(
    ws_base: str, http: httpx.AsyncClient, me: tuple[str, dict[str, str]], other_id: str
) -> float:
    token, headers = me
    async with websockets.connect(f"{ws_base}/ws?token={token}") as ws:
        json.loads(await ws.recv())
        started = time.monotonic()
        await http.post(BASE + "enqueue", json={}, headers=headers)
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if event["type"] in ("partner-skipped", "partner-left"):
                await http.post(BASE + "enqueue", json={}, headers=headers)
            if event["type"] != "matched":
                continue
            if event["match"]["partnerId"] == other_id:
                return time.monotonic() - started
            await http.post(BASE + "skip", json={"requeue": True}, headers=headers)


async def churn_case(
    http: httpx.AsyncClient, base: str, ws_base: str, runs: int, warmup_s: float
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.churn", "--base", base, "--address", BOT_ADDRESS]
    churner = await asyncio.create_subprocess_exec(
        *argv,
        "--sessions",
        "200",
        "--seconds",
        "300",
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    times = []
    try:
        await asyncio.sleep(warmup_s)
        for _ in range(runs):
            a = await session(http, REAL_ADDRESSES[0])
            b = await session(http, REAL_ADDRESSES[1])
            a_user = await user_id(http, a)
            b_user = await user_id(http, b)
            got = await asyncio.gather(
                meet(ws_base, http, a, b_user), meet(ws_base, http, b, a_user)
            )
            times.append(round(max(got), 3))
            for u in (a, b):
                await http.post(BASE + "leave", json={}, headers=u[1])
    finally:
        churner.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(churner.communicate(), 60)
    counts = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "attacker": counts,
        "meet_s": sorted(times),
        "meet_median_s": statistics.median(times),
        "meet_max_s": max(times),
    }


async def user_id(http: httpx.AsyncClient, user: tuple[str, dict[str, str]]) -> str:
    token, _ = user
    async with websockets.connect(
        f"ws://{http.base_url.host}:{http.base_url.port}/ws?token={token}"
    ) as ws:
        return str(json.loads(await ws.recv())["userId"])


async def crowd_case(
    http: httpx.AsyncClient, ws_base: str, seconds: float, rng: random.Random
) -> dict[str, Any]:
    """50 users at one address and 10 from others, each skipping 2-6 s after every match."""
    waits: dict[str, list[float]] = {"nat": [], "others": []}
    matches: dict[str, int] = {}
    stop = asyncio.Event()

    async def person(group: str, address: str) -> None:
        token, headers = await session(http, address)
        matches[token] = 0
        async with websockets.connect(f"{ws_base}/ws?token={token}") as ws:
            json.loads(await ws.recv())
            queued_at = time.monotonic()
            answer = (await http.post(BASE + "enqueue", json={}, headers=headers)).json()
            room = answer["match"]["roomName"] if answer.get("status") == "matched" else None
            if room:
                waits[group].append(0.0)
                matches[token] += 1
            while not stop.is_set():
                if room is not None:
                    try:
                        event = json.loads(await asyncio.wait_for(ws.recv(), rng.uniform(2, 6)))
                    except TimeoutError:
                        queued_at = time.monotonic()
                        reply = await http.post(
                            BASE + "skip", json={"requeue": True}, headers=headers
                        )
                        body = reply.json()
                        room = None
                        if body.get("status") == "matched":
                            room = body["match"]["roomName"]
                            waits[group].append(time.monotonic() - queued_at)
                            matches[token] += 1
                        continue
                    if (
                        event.get("type") in ("partner-skipped", "partner-left")
                        and event.get("roomName") == room
                    ):
                        room = None
                        queued_at = time.monotonic()
                        await http.post(BASE + "enqueue", json={}, headers=headers)
                    continue
                try:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                except TimeoutError:
                    continue
                if event.get("type") == "matched" and room is None:
                    room = event["match"]["roomName"]
                    waits[group].append(time.monotonic() - queued_at)
                    matches[token] += 1

    people = [asyncio.create_task(person("nat", NAT_ADDRESS)) for _ in range(50)]
    people += [asyncio.create_task(person("others", f"203.0.113.{100 + i}")) for i in range(10)]
    await asyncio.sleep(seconds)
    stop.set()
    # Not waited out: a person may sit in a 6 s wait for their partner's next move.
    for person_task in people:
        person_task.cancel()
    await asyncio.gather(*people, return_exceptions=True)
    return {
        "seconds": seconds,
        "users": {"nat": 50, "others": 10},
        "never_matched": sum(1 for n in matches.values() if n == 0),
        "matches": {g: len(v) for g, v in waits.items()},
        "wait_median_s": {
            g: round(statistics.median(v), 3) if v else None for g, v in waits.items()
        },
        "wait_p90_s": {
            g: round(sorted(v)[int(0.9 * (len(v) - 1))], 3) if v else None for g, v in waits.items()
        },
    }


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


async def run_cases(redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    proc = start_app(app_env(redis_url), port)
    base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    rng = random.Random(18)
    try:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
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
            never_reading = await never_reading_case(
                http, base, ws_base, proc.pid, args.flood_s, args.skips
            )
            before = rss_kib(proc.pid)
            codes = await big_frames(ws_base, http, args.big_frames)
            after = rss_kib(proc.pid)
            churn = await churn_case(http, base, ws_base, args.churn_runs, args.churn_warmup_s)
            crowd = await crowd_case(http, ws_base, args.crowd_s, rng)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return {
        "skip_notified_idle": stats(idle),
        "skip_notified_during_ping_flood": stats(flooded),
        "flood_pings_sent": pings,
        "never_reading_flood": never_reading,
        "rss_kib_before_big_frames": before,
        "rss_kib_after_frames_of_16_mb": after,
        "frames_of_16_mb": args.big_frames,
        "big_frame_close_codes": sorted({c for c in codes if c is not None}),
        "churning_sessions": churn,
        "honest_nat": crowd,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushskip-abuse-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        try:
            return await run_cases(url, args)
        finally:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--skips", type=int, default=100)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--crowd-s", type=float, default=30.0)
    parser.add_argument("--big-frames", type=int, default=20)
    parser.add_argument("--churn-runs", type=int, default=5)
    parser.add_argument("--churn-warmup-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


async def phase_abuse(bench: Any, results: dict[str, Any]) -> None:
    """The `abuse` phase of `python -m bench`: these cases against an app of their own, on
    the bench's Redis (a database of its own), figures into results["abuse"]."""
    if bench.args.url or bench.redis_url is None:
        results["abuse"] = {"skipped": "needs the apps the bench starts (no --url)"}
        return
    quick = bench.cfg.quick
    args = argparse.Namespace(
        skips=10 if quick else 100,
        flood_s=1.0 if quick else 10.0,
        crowd_s=2.0 if quick else 30.0,
        big_frames=5 if quick else 20,
        churn_runs=1 if quick else 5,
        churn_warmup_s=1.5 if quick else 3.0,
    )
    url = bench.redis_url.split("?", 1)[0] + "?db=7"
    results["abuse"] = await run_cases(url, args)
