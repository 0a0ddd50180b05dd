"""The harness the phases run in: the config, the progress display, and `Bench`.

`Bench` owns what every phase shares: the private Redis (or the one given),
the listener process, the app processes it starts (or the app given with
--url), the work directory and the sessions. It knows no phase: each phase
module takes a `Bench` and the runner calls them in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

from bench.httpc import HttpPool
from bench.procs import CpuMeter, ListenerClient, ServerProcess, with_repo_on_path


@dataclasses.dataclass
class BenchConfig:
    """The sizes and durations of a run: the full defaults, or `quick_config()` for --quick."""

    quick: bool = False
    latency_pairs: tuple[int, ...] = (100, 1000)
    latency_rate: float = 100.0
    latency_warmup_s: float = 2.0
    latency_duration_s: float = 20.0
    floor_duration_s: float = 20.0
    sat_pairs: int = 1000
    sat_rates: tuple[float, ...] = (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000)
    sat_warmup_s: float = 1.0
    sat_step_s: float = 6.0
    sat_p99_ms: float = 50.0
    sat_target: float = 1500.0
    # The saturation ladder again against one `pushskip serve --workers N` (0: not run).
    sat_workers: int = 2
    sat_workers_rates: tuple[float, ...] | None = None  # None: the same ladder
    profile_s: float = 8.0
    capacity_counts: tuple[int, ...] = (1000, 5000, 10000)
    capacity_window_s: float = 10.0
    micro_s: float = 2.0
    cooldown_s: int = 1
    poll_interval_s: float = 0.5
    # The integrations phase: skip -> notified with webhooks (and media rooms) on and off.
    integration_pairs: int = 500
    integration_rounds: int = 5
    integration_duration_s: float = 10.0

    @classmethod
    def quick_config(cls) -> BenchConfig:
        return cls(
            quick=True,
            latency_pairs=(50,),
            latency_warmup_s=0.5,
            latency_duration_s=1.5,
            floor_duration_s=2.0,
            sat_pairs=50,
            sat_rates=(100, 200),
            sat_workers_rates=(100,),
            sat_warmup_s=0.5,
            sat_step_s=1.5,
            profile_s=2.0,
            capacity_counts=(500,),
            capacity_window_s=1.0,
            micro_s=0.5,
            integration_pairs=50,
            integration_rounds=1,
            integration_duration_s=1.5,
        )


class UI:
    """A rich progress display (plain lines when rich is missing or output is not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.console: Any = None
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return
        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            refresh_per_second=4,
        )

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def task(self, description: str, total: float) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def update(self, task: Any, **kw: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, **kw)

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


class External:
    """An app someone else runs (--url): nothing to start or stop, no RSS unless --app-pid."""

    def __init__(self, base: str, pid: int | None) -> None:
        self.base = base.rstrip("/")
        self.ws_url = "ws" + self.base[len("http") :] + "/ws"
        self.pid = pid

    def stop(self) -> None:
        pass


class Bench:
    def __init__(self, cfg: BenchConfig, args: argparse.Namespace, ui: UI) -> None:
        self.cfg = cfg
        self.args = args
        self.ui = ui
        self.workdir = Path(tempfile.mkdtemp(prefix="pushskip-bench-"))
        self.secret = args.secret or secrets.token_urlsafe(32)
        self.redis_url: str | None = args.redis_url
        self.redis: Any = None
        self.embedded: Any = None
        self.listener = ListenerClient()
        self.apps: list[ServerProcess] = []
        self.app: ServerProcess | External | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if self.redis_url is None and self.args.url is None:
            from pushskip.embedded import EmbeddedRedis

            self.embedded = EmbeddedRedis(self.workdir / "redis")
            self.redis_url = await asyncio.to_thread(self.embedded.start)
        if self.redis_url is not None:
            from redis.asyncio import Redis

            self.redis = Redis.from_url(self.redis_url, decode_responses=True)
            await self.redis.ping()
        await self.listener.start(self.workdir / "listener.log")
        if self.args.url:
            self.app = External(self.args.url, self.args.app_pid)
        else:
            self.app = await self.start_app("app")

    async def close(self) -> None:
        await self.listener.stop()
        for app in self.apps:
            app.stop()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.close)
        if not self.args.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def child_env(self) -> dict[str, str]:
        return with_repo_on_path({**os.environ, "PYTHONUNBUFFERED": "1"})

    def app_env(self) -> dict[str, str]:
        assert self.redis_url is not None
        url = self.redis_url
        if self.args.app_redis_pool:
            url += ("&" if "?" in url else "?") + f"max_connections={self.args.app_redis_pool}"
        env = {
            **self.child_env(),
            "REDIS_URL": url,
            "PUSHSKIP_SECRET": self.secret,
            # The per-user rate limit must not shape a load test.
            "PUSHSKIP_RATE_PER_S": "1000000",
            "PUSHSKIP_RATE_BURST": "1000000",
            # All of the bench's users come from one address.
            "PUSHSKIP_SESSION_RATE_PER_MIN": "100000000",
            "PUSHSKIP_MAX_WAITING_PER_ADDRESS": "100000000",
            "PUSHSKIP_ENQUEUE_RATE_PER_ADDRESS": "100000000",
            "PUSHSKIP_REMATCH_COOLDOWN_S": str(self.cfg.cooldown_s),
            "PUSHSKIP_QUEUE_STALE_S": "3600",
            # The HTTP skippers make no request between skips and the bench re-pairs them
            # on Redis: with the default grace (5 s) one that skips less often is declared
            # gone and its match ended ("No active match"), and a fresh process's sweep
            # would end the earlier phases' users during the capacity baseline.
            "PUSHSKIP_PRESENCE_GRACE_S": "3600",
            **dict(item.split("=", 1) for item in self.args.app_env),
        }
        # An --app-env PYTHONPATH replaces the inherited one: the repository goes back on it,
        # after the given directories, for the profiler's `python -m bench.profiled` wrapper.
        return with_repo_on_path(env)

    def app_target(self) -> ServerProcess | External:
        assert self.app is not None
        return self.app

    async def start_app(
        self,
        name: str,
        *,
        wrapper: list[str] | None = None,
        serve_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess | External:
        """An app process (`env`: variables added to, or replacing, `app_env()`'s)."""
        if self.args.url:
            return External(self.args.url, self.args.app_pid)
        # A wrapper (the profiler) runs pushskip.cli.main with the same arguments.
        argv = list(wrapper) if wrapper else [sys.executable, "-m", "pushskip"]
        argv += ["--log-level", self.args.app_log_level, "serve", "--port", "{port}"]
        argv += serve_args or []
        app = ServerProcess(name, argv, {**self.app_env(), **(env or {})}, self.workdir)
        self.apps.append(app)
        try:
            await app.start()
        except Exception:
            self.ui.log(app.log_tail())
            raise
        return app

    async def quiet(self, max_wait_s: float, threshold_pct: float = 15.0) -> dict[str, Any]:
        """CPU the machine's other processes use, sampled over 1 s; waits while it is high."""
        waited = 0.0
        while True:
            meter = CpuMeter({**self.pids(), **{f"app{i}": a.pid for i, a in enumerate(self.apps)}})
            meter.start()
            await asyncio.sleep(1.0)
            sample = meter.stop()
            others = sample.get("others", 0.0)
            if others < threshold_pct or waited >= max_wait_s:
                return {"others_cpu_pct": others, "waited_s": waited}
            waited += 1.0

    def pids(self, app: int | None = None) -> dict[str, int | None]:
        return {
            "app": app,
            "redis": self.embedded.process.pid if self.embedded and self.embedded.process else None,
            "driver": os.getpid(),
            "listener": self.listener.pid,
        }

    async def sessions(self, base: str, n: int, *, local: bool = False) -> list[tuple[str, str]]:
        """n sessions: from POST /api/session, or signed here with the shared secret (local)."""
        if local and not self.args.url:
            from pushskip.auth import TokenSigner, new_user_id

            signer = TokenSigner(self.secret, ttl_s=24 * 3600)
            users = []
            for _ in range(n):
                uid = new_user_id()
                users.append((uid, signer.sign(uid)))
            return users
        pool = HttpPool(base, size=32)
        sem = asyncio.Semaphore(32)

        async def one() -> tuple[str, str]:
            async with sem:
                status, body = await pool.request("POST", "/api/session", body=b"{}")
                if status != 200:
                    raise RuntimeError(f"POST /api/session -> {status} {body[:200]!r}")
                data = json.loads(body)
                return data["userId"], data["token"]

        try:
            return list(await asyncio.gather(*(one() for _ in range(n))))
        finally:
            pool.close()
