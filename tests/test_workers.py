"""`pushskip serve --workers N`: N real worker processes on one port, under one parent
that owns the private Redis and the secret; real websockets and httpx clients.

Which worker holds a WebSocket is read from /proc: the server end of the
connection is a socket inode that exactly one worker has open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

import httpx
import pytest
import websockets

from pushskip import config
from pushskip.cli import main
from pushskip.config import ConfigError, Settings
from pushskip.embedded import EmbeddedRedis
from tests.helpers import User, app_process, free_port, new_user, serve_process
from tests.test_ws import matched_pair, recv_json, ws_url

# Generous: a loaded 2-core machine spawns a worker (a fresh interpreter) in ~1 s.
COME_UP_S = 20.0
REDIS_SERVER_NAMES = ("valkey-server", "redis-server")

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads /proc to tell the workers apart"
)


@contextlib.contextmanager
def workers_process(count: int = 2) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """`pushskip serve --workers count` with REDIS_URL and PUSHSKIP_SECRET unset; yields
    (base URL, port, the parent process) once a worker answers /healthz."""
    port = free_port()
    unset = ("REDIS_URL", "PUSHSKIP_SECRET", "PUSHSKIP_WORKERS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PUSHSKIP_RATE_PER_S="10000", PUSHSKIP_RATE_BURST="10000")
    argv = [sys.executable, "-m", "pushskip", "--log-level", "WARNING", "serve"]
    argv += ["--port", str(port), "--workers", str(count)]
    with serve_process(argv, port, env=env) as (base, proc):
        yield base, port, proc


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry))
    return found


def running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def is_redis_server(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in REDIS_SERVER_NAMES
    except OSError:
        return False


def server_side_owner(ws: websockets.ClientConnection, port: int, pids: set[int]) -> int | None:
    """The one of `pids` that holds the server end of `ws`'s TCP connection."""
    client_port = ws.local_address[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote = fields[1], fields[2]
                if (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)) == (
                    port, client_port,
                ):
                    inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


async def healthz_pid(base: str) -> int:
    """The pid of the worker that answers /healthz on a new connection."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.get("/healthz")
        assert response.status_code == 200, response.text
        return int(response.json()["pid"])


async def pids_answering(
    base: str, count: int, *, besides: AbstractSet[int] = frozenset()
) -> set[int]:
    """Hit /healthz until `count` distinct pids not in `besides` have answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + COME_UP_S
    while len(seen - besides) < count:
        assert time.monotonic() < deadline, f"only {seen} answered"
        seen.add(await healthz_pid(base))
    return seen - besides


async def socket_on(
    base: str, user: User, port: int, pid: int, workers: set[int]
) -> websockets.ClientConnection:
    """A WebSocket of `user` (past its hello) held by worker `pid`: connect until one lands."""
    deadline = time.monotonic() + COME_UP_S
    while True:
        assert time.monotonic() < deadline, f"no socket landed on worker {pid}"
        ws = await websockets.connect(ws_url(base, user))
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        if server_side_owner(ws, port, workers) == pid:
            return ws
        await ws.close()


@contextlib.asynccontextmanager
async def sockets_on_each(
    base: str, user: User, port: int, workers: set[int]
) -> AsyncIterator[dict[int, websockets.ClientConnection]]:
    """One WebSocket of `user` on each worker, by pid."""
    sockets: dict[int, websockets.ClientConnection] = {}
    try:
        for pid in sorted(workers):
            sockets[pid] = await socket_on(base, user, port, pid, workers)
        yield sockets
    finally:
        for ws in sockets.values():
            await ws.close()


async def test_two_workers_share_one_port_one_redis_and_one_secret() -> None:
    """Two worker pids answer on the one port; the parent started the only Redis; a token
    minted by one worker is good on the other, and a skip handled by one reaches the
    partner's sockets on both."""
    with workers_process() as (base, port, proc):
        workers = await pids_answering(base, 2)
        assert proc.pid not in workers
        family = children(proc.pid)
        assert workers <= family
        assert len([p for p in family if is_redis_server(p)]) == 1
        assert all(not children(pid) for pid in workers)  # no worker runs its own Redis
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            a, b, room = await matched_pair(http)
            async with sockets_on_each(base, b, port, workers) as sockets:
                await a.call("skip", {"requeue": False})
                for ws in sockets.values():
                    event = await recv_json(ws)
                    assert (event["type"], event["seq"], event["roomName"]) == (
                        "partner-skipped", 2, room,
                    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_signal_to_the_parent_drains_every_worker(signum: signal.Signals) -> None:
    """SIGTERM or SIGINT to the parent: the sockets on both workers close with 1001, the
    parent exits 0 and leaves no worker, Redis or helper process behind."""
    with workers_process() as (base, port, proc):
        workers = await pids_answering(base, 2)
        family = children(proc.pid)  # the workers, Redis, multiprocessing's tracker
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            user = await new_user(http)
        async with sockets_on_each(base, user, port, workers) as sockets:
            proc.send_signal(signum)
            for ws in sockets.values():
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await recv_json(ws, timeout=30)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.to_thread(proc.wait, 30) == 0
        deadline = time.monotonic() + 10
        while left := [pid for pid in family if running(pid)]:
            assert time.monotonic() < deadline, f"left running: {left}"
            await asyncio.sleep(0.05)


async def test_a_killed_worker_is_replaced_on_the_same_port() -> None:
    """SIGKILL one worker: the parent starts another, which answers on the same port,
    accepts the tokens minted before and delivers events."""
    with workers_process() as (base, port, proc):
        workers = await pids_answering(base, 2)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            a, b, room = await matched_pair(http)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        (replacement,) = await pids_answering(base, 1, besides=workers)
        assert replacement in children(proc.pid)
        assert not running(victim)
        ws = await socket_on(base, b, port, replacement, workers | {replacement})
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                await User(http, a.id, a.token).call("skip", {"requeue": False})
            event = await recv_json(ws)
            assert (event["type"], event["seq"], event["roomName"]) == (
                "partner-skipped", 2, room,
            )
        finally:
            await ws.close()
        assert proc.poll() is None


async def test_one_worker_is_the_process_itself(redis_server: EmbeddedRedis) -> None:
    """The default (--workers 1) runs no supervisor: the process started serves alone."""
    with app_process(redis_server.url) as (base, proc):
        assert await healthz_pid(base) == proc.pid
        assert not children(proc.pid)


def test_workers_setting_and_flag() -> None:
    """PUSHSKIP_WORKERS and --workers take a positive number or `auto` (one per core)."""
    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"PUSHSKIP_WORKERS": "3"}).workers == 3
    assert Settings.from_env({"PUSHSKIP_WORKERS": "auto"}).workers == config.cpu_count() >= 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(ConfigError, match="PUSHSKIP_WORKERS"):
            Settings.from_env({"PUSHSKIP_WORKERS": bad})
    with pytest.raises(SystemExit) as info:
        main(["serve", "--workers", "0"])
    assert info.value.code == 2
