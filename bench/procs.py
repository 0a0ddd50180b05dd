"""The processes the benchmark starts and watches: app servers, the listener, /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.httpc import HttpConn, HttpError, split_base
from pushskip.embedded import die_with_parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
# `bench` is a top-level package of the repository, not an installed one.
REPO_ROOT = Path(__file__).resolve().parents[1]


def with_repo_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the repository root on PYTHONPATH (appended, unless already there).

    The children run `python -m bench.listener` and the like: they must find the
    `bench` package even when the bench was started from another directory with
    the repository on sys.path some other way, or when --app-env set PYTHONPATH.
    """
    out = dict(env)
    entries = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in entries:
        out["PYTHONPATH"] = os.pathsep.join([*entries, str(REPO_ROOT)])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (its threads included)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The pids of a process's children (from every thread's `children` list)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        return []
    return out


def children_cpu_seconds(pid: int | None) -> dict[int, float]:
    """User + system CPU time so far of each child of `pid` (a supervisor's workers)."""
    if pid is None:
        return {}
    out: dict[int, float] = {}
    for child in children(pid):
        cpu = cpu_seconds(child)
        if cpu is not None:
            out[child] = cpu
    return out


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float | None:
    """CPU time all cores spent not idle since boot (from /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


class CpuMeter:
    """CPU used by named processes between start() and stop(), in % of one core.

    `others` is what every other process on the machine used meanwhile: the
    benchmark's numbers are only as clean as that is small. A name in
    `children` counts the CPU of that process's children instead of its own
    (`pushskip serve --workers N`: the workers do the work, not the parent).
    `seconds` holds each name's CPU seconds over the window after stop().
    """

    def __init__(self, pids: dict[str, int | None], children: frozenset[str] = frozenset()) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.children = children
        self._start: dict[str, float | None] = {}
        self._start_children: dict[str, dict[int, float]] = {}
        self._busy0: float | None = None
        self._t0 = 0.0
        self.seconds: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {k: cpu_seconds(p) for k, p in self.pids.items() if k not in self.children}
        self._start_children = {
            k: children_cpu_seconds(p) for k, p in self.pids.items() if k in self.children
        }
        self._busy0 = machine_busy_seconds()
        return self

    def _used(self, name: str, pid: int) -> float | None:
        if name in self.children:
            before = self._start_children.get(name, {})
            now = children_cpu_seconds(pid)
            # A child that started meanwhile counts from 0; one that died is lost.
            return sum(cpu - before.get(child, 0.0) for child, cpu in now.items())
        start, after = self._start.get(name), cpu_seconds(pid)
        return None if start is None or after is None else after - start

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy1 = machine_busy_seconds()
        out: dict[str, float] = {}
        ours = 0.0
        self.seconds = {}
        for name, pid in self.pids.items():
            used = self._used(name, pid)
            if used is not None:
                self.seconds[name] = used
                out[name] = round(100 * used / wall, 1)
                ours += used
        if self._busy0 is not None and busy1 is not None:
            out["machine"] = round(100 * (busy1 - self._busy0) / wall, 1)
            out["others"] = round(max(0.0, 100 * (busy1 - self._busy0 - ours) / wall), 1)
        out["wall_s"] = round(wall, 2)
        return out


async def wait_http(
    base: str,
    path: str = "/healthz",
    *,
    timeout_s: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    host, port = split_base(base)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} while starting")
        conn = HttpConn(host, port)
        try:
            status, _ = await conn.request("GET", path)
            if status == 200:
                return
        except (OSError, HttpError):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}{path} did not answer 200 within {timeout_s:.0f}s")
        await asyncio.sleep(0.1)


class ServerProcess:
    """A server subprocess on a free loopback port, its output kept in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        *,
        health_path: str = "/healthz",
        port: int | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.env = env
        self.health_path = health_path
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> ServerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a quick spawn, then waited on async
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        log.close()
        await wait_http(self.base, self.health_path, proc=self.proc)
        return self

    def stop(self, timeout_s: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


class ListenerClient:
    """Drives `python -m bench.listener` over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, stderr_path: Path) -> ListenerClient:
        err = stderr_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.listener",
            env=with_repo_on_path(os.environ),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            limit=2**28,
            preexec_fn=die_with_parent,
        )
        err.close()
        self._reader = asyncio.create_task(self._read())
        await self.call("ping")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            fut = self._pending.pop(msg.pop("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the listener process exited"))

    async def call(self, cmd: str, *, timeout_s: float = 300.0, **kwargs: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        cid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        self.proc.stdin.write(json.dumps({"id": cid, "cmd": cmd, **kwargs}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(fut, timeout_s)
        if not reply.pop("ok"):
            raise RuntimeError(f"listener {cmd} failed: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.call("exit", timeout_s=30)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader:
            self._reader.cancel()
        self.proc = None
