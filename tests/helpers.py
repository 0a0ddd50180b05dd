"""Test helpers: real servers on free ports, sessions, Redis snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette

from pushskip import keys
from pushskip.app import create_app
from pushskip.churn import ChurnTurns
from pushskip.config import Settings
from pushskip.server import PushskipServer, server_config

TEST_SECRET = "test-secret-not-for-production"
SHUTDOWN_LIMIT_S = 45.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "secret": TEST_SECRET,
        "rate_per_s": 10_000.0,
        "rate_burst": 10_000,
        # Every test client comes from 127.0.0.1: per-address limits are tested on their own.
        "session_rate_per_min": 1_000_000,
        "max_waiting_per_address": 100_000,
        "enqueue_rate_per_address": 1_000_000.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings, churn: ChurnTurns | None = None, app: Starlette | None = None
) -> AsyncIterator[str]:
    """A real uvicorn serving create_app(settings) (or `app`, under the same server
    settings) in this event loop; yields its base URL."""
    port = free_port()
    app = create_app(settings) if app is None else app
    config = server_config(app, settings, host="127.0.0.1", port=port, churn=churn)
    server = PushskipServer(config)
    server.config.install_signal_handlers = False  # type: ignore[attr-defined]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_LIMIT_S)
        except TimeoutError:
            # Say where it hangs (for the CI log), then stop it hard.
            for other in asyncio.all_tasks():
                other.print_stack(file=sys.stderr)
            server.force_exit = True
            await task
            raise AssertionError("the server did not shut down in time") from None


@contextlib.contextmanager
def app_process(redis_url: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`pushskip serve` in its own process (as in production); yields (base URL, process)."""
    port = free_port()
    full_env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PUSHSKIP_SECRET": TEST_SECRET,
        "PUSHSKIP_RATE_PER_S": "10000",
        "PUSHSKIP_RATE_BURST": "10000",
        "PUSHSKIP_SESSION_RATE_PER_MIN": "1000000",
        "PUSHSKIP_MAX_WAITING_PER_ADDRESS": "100000",
        "PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS": "1000000",
        **env,
    }
    argv = [sys.executable, "-m", "pushskip", "--log-level", "WARNING", "serve"]
    with serve_process([*argv, "--port", str(port)], port, env=full_env) as running:
        yield running


@contextlib.contextmanager
def serve_process(
    argv: list[str], port: int, *, env: dict[str, str], cwd: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `pushskip serve` command line in its own process, SIGTERMed after.

    Yields (base URL, process) once /healthz answers 200.
    """
    proc = subprocess.Popen(argv, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app process exited with {proc.returncode}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("app process did not come up")
            time.sleep(0.05)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class User:
    """A client with its own session, as a browser would have."""

    def __init__(self, http: httpx.AsyncClient, user_id: str, token: str) -> None:
        self.http = http
        self.id = user_id
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return f"User({self.id})"

    async def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.http.post(
            "/api/simple-matching/" + path, json=json, headers=self.headers, **kw
        )

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.get("/api/simple-matching/" + path, headers=self.headers, **kw)

    async def call(self, path: str, json: Any = None) -> dict[str, Any]:
        """POST (or GET for read-only routes) and return the JSON of a 200."""
        if path in ("status", "left-behind-status") or path.startswith("events"):
            response = await self.get(path)
        else:
            response = await self.post(path, json=json if json is not None else {})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True
        return body


async def new_user(http: httpx.AsyncClient) -> User:
    response = await http.post("/api/session")
    assert response.status_code == 200, response.text
    body = response.json()
    return User(http, body["userId"], body["token"])


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key with its type, value and TTL presence: to prove nothing changed.

    Leaves out the app processes' presence leases (and the socket counts they carry),
    which they renew every second whatever the requests do. Three round trips whatever the number of
    keys (tests/test_fuzz.py takes two snapshots per example)."""
    renewed = (keys.PRESENCE_PROCS, keys.PRESENCE_COUNTS)
    names = [key async for key in redis.scan_iter(count=1000) if key not in renewed]
    async with redis.pipeline(transaction=False) as pipe:
        for key in names:
            pipe.type(key)
        kinds = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for key, kind in zip(names, kinds, strict=True):
            if kind == "string":
                pipe.get(key)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                pipe.xrange(key)
            elif kind == "hash":
                pipe.hgetall(key)
            elif kind == "set":
                pipe.smembers(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            else:
                pipe.echo(kind)
            pipe.ttl(key)
        replies = await pipe.execute()
    result: dict[str, Any] = {}
    for i, (key, kind) in enumerate(zip(names, kinds, strict=True)):
        value, ttl = replies[2 * i], replies[2 * i + 1]
        result[key] = (kind, value, ttl > 0)
    return result
