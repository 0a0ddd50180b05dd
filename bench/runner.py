"""The run: private Redis and app processes, the phases in order, the outputs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import resource
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Self

from bench.httpc import HttpPool
from bench.procs import CpuMeter, ListenerClient, ServerProcess, with_repo_on_path


@dataclasses.dataclass
class BenchConfig:
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
    profile_s: float = 8.0
    capacity_counts: tuple[int, ...] = (1000, 5000, 10000)
    capacity_window_s: float = 10.0
    micro_s: float = 2.0
    cooldown_s: int = 1
    poll_interval_s: float = 0.5

    @classmethod
    def quick_config(cls) -> BenchConfig:
        return cls(
            quick=True,
            latency_pairs=(50,),
            latency_warmup_s=0.5,
            latency_duration_s=3.0,
            floor_duration_s=2.0,
            sat_pairs=50,
            sat_rates=(100, 200),
            sat_warmup_s=0.5,
            sat_step_s=2.0,
            profile_s=2.0,
            capacity_counts=(500,),
            capacity_window_s=2.0,
            micro_s=0.5,
        )


PHASES = ("micro", "floors", "latency", "saturation", "profile", "capacity")


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
            "PUSHSKIP_REMATCH_COOLDOWN_S": str(self.cfg.cooldown_s),
            "PUSHSKIP_QUEUE_STALE_S": "3600",
            **dict(item.split("=", 1) for item in self.args.app_env),
        }
        # An --app-env PYTHONPATH replaces the inherited one: the repository goes back on it,
        # after the given directories, for the profiler's `python -m bench.profiled` wrapper.
        return with_repo_on_path(env)

    def app_target(self) -> ServerProcess | External:
        assert self.app is not None
        return self.app

    async def start_app(
        self, name: str, *, wrapper: list[str] | None = None
    ) -> ServerProcess | External:
        if self.args.url:
            return External(self.args.url, self.args.app_pid)
        # A wrapper (the profiler) runs pushskip.cli.main with the same arguments.
        argv = list(wrapper) if wrapper else [sys.executable, "-m", "pushskip"]
        argv += ["--log-level", self.args.app_log_level, "serve", "--port", "{port}"]
        app = ServerProcess(name, argv, self.app_env(), self.workdir)
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


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    versions: dict[str, str | None] = {}
    from importlib import metadata

    for pkg in ("starlette", "uvicorn", "websockets", "redis", "h11", "httptools", "uvloop"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "shared_cores": "the load generators (this process and the listener), the app process "
        "and Redis all run on this machine and share its cores",
    }


async def run_all(cfg: BenchConfig, args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    phases = [p for p in (args.phases.split(",") if args.phases else PHASES)]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": 1,
        "tool": "python -m bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if cfg.quick else "full",
        "command": "python -m bench " + " ".join(args.raw_argv),
        "machine": machine_info(),
        "config": dataclasses.asdict(cfg),
        "errors": {},
    }
    bench = Bench(cfg, args, ui)
    overall = ui.task("bench", total=len(phases))
    try:
        await bench.start()
        if bench.redis is not None:
            info = await bench.redis.info("server")
            results["machine"]["redis"] = {
                "version": info.get("valkey_version") or info.get("redis_version"),
                "server": info.get("server_name", "redis"),
                "url": "private (unix socket)" if bench.embedded else "given (--redis-url)",
            }
        results["target"] = {
            "url": args.url or "private app processes (python -m pushskip serve)",
            "app_log_level": args.app_log_level,
            "app_redis_pool": args.app_redis_pool,
            "app_env": list(args.app_env),
        }
        for phase in phases:
            ui.update(overall, description=f"bench: {phase}")
            q = await bench.quiet(args.wait_quiet)
            results.setdefault("machine_noise", {})[phase] = q
            if q["others_cpu_pct"] >= 15:
                ui.log(f"note: other processes use {q['others_cpu_pct']}% CPU before {phase}")
            t0 = time.monotonic()
            try:
                await PHASE_FUNCS[phase](bench, results)
            except Exception as exc:
                results["errors"][phase] = f"{exc!r}"
                ui.log(f"phase {phase} FAILED: {exc!r}\n{traceback.format_exc()}")
                for app in bench.apps:
                    if app.proc is not None and app.proc.poll() is not None:
                        ui.log(f"{app.name} exited: {app.log_tail()}")
            results.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - t0, 1)
            ui.update(overall, advance=1)
    finally:
        await bench.close()
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results


# ---- phases -------------------------------------------------------------------------------


async def phase_micro(bench: Bench, results: dict[str, Any]) -> None:
    from bench import micro

    if bench.redis is None:
        results["micro"] = {"skipped": "no Redis URL"}
        return
    task = bench.ui.task("micro: Lua scripts via Store", total=4)
    results["micro"] = await micro.run(
        bench,
        seconds=bench.cfg.micro_s,
        on_tick=lambda name: bench.ui.update(task, advance=1),
    )


async def phase_floors(bench: Bench, results: dict[str, Any]) -> None:
    from bench import floors

    cfg = bench.cfg
    out: dict[str, Any] = {}
    total = cfg.latency_warmup_s + cfg.floor_duration_s
    if bench.redis_url is not None:
        task = bench.ui.task("floor: Redis PUBLISH -> subscriber", total=total)
        out["redis_pubsub"] = _slim(
            await floors.redis_pubsub(
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
    out["starlette_push"] = _slim(
        await floors.starlette_push(
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


def _progress_to(ui: UI, task: Any, completed: float) -> None:
    ui.update(task, completed=completed)


def _slim(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the raw latencies only as a small histogram-friendly sample for the plots."""
    lat = result.pop("_latencies", [])
    lat.sort()
    step = max(1, len(lat) // 2000)
    result["sample_ms"] = [round(x, 3) for x in lat[::step]]
    return result


async def phase_latency(bench: Bench, results: dict[str, Any]) -> None:
    from bench.latency import Scenario

    cfg = bench.cfg
    app = bench.app_target()
    runs = []
    for pairs in cfg.latency_pairs:
        for transport in ("ws", "poll"):
            name = f"{transport}-{pairs}"
            total = cfg.latency_warmup_s + cfg.latency_duration_s
            task = bench.ui.task(
                f"latency: {pairs} pairs over {'WebSocket' if transport == 'ws' else 'polling'} "
                f"@ {cfg.latency_rate:g} skips/s",
                total=total,
            )
            sc = Scenario(
                bench,
                name=name,
                base=app.base,
                ws_url=app.ws_url,
                pairs=pairs,
                transport=transport,
                app_pid=app.pid,
                seed=pairs,
            )
            setup = await sc.setup()
            try:
                result = await sc.run(
                    cfg.latency_rate,
                    cfg.latency_warmup_s,
                    cfg.latency_duration_s,
                    on_tick=functools.partial(_progress_to, bench.ui, task),
                )
            finally:
                await sc.teardown()
            result.update(setup)
            bench.ui.update(task, completed=total)
            lat = result["latency_ms"]
            bench.ui.log(
                f"  {name}: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
                f"lost {result['lost']}, errors {result['errors']}"
            )
            runs.append(_slim(result))
    results["latency"] = runs


async def phase_saturation(bench: Bench, results: dict[str, Any]) -> None:
    from bench import saturation

    cfg = bench.cfg
    task = bench.ui.task(
        f"saturation: stepping skips/s ({cfg.sat_pairs} pairs)", total=len(cfg.sat_rates)
    )

    def on_step(row: dict[str, Any]) -> None:
        bench.ui.update(task, advance=1)
        lat = row["latency_ms"]
        bench.ui.log(
            f"  {row['rate_target']:g}/s: achieved {row['rate_achieved']}/s, "
            f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms -> {row['verdict']}"
        )

    results["saturation"] = await saturation.run(bench, on_step=on_step)
    bench.ui.update(task, completed=len(cfg.sat_rates))


async def phase_profile(bench: Bench, results: dict[str, Any]) -> None:
    from bench import saturation

    if bench.args.url:
        results["profile"] = {"skipped": "profiling needs an app process the bench starts"}
        return
    cfg = bench.cfg
    # Profile where the app still keeps up: the highest sustained step (an overloaded app
    # spends its time failing requests, which is not where a healthy one spends it).
    sustained = (results.get("saturation") or {}).get("max_sustained_rate") or 0
    rate = float(sustained) if sustained else (cfg.sat_rates[-1] if cfg.quick else cfg.sat_target)
    task = bench.ui.task(f"profile: pyinstrument at {rate:g} skips/s", total=1)
    results["profile"] = await saturation.profile(bench, rate)
    bench.ui.update(task, completed=1)


async def phase_capacity(bench: Bench, results: dict[str, Any]) -> None:
    from bench import capacity

    cfg = bench.cfg
    task = bench.ui.task(
        f"capacity: idle sockets vs pollers {list(cfg.capacity_counts)}",
        total=2 * len(cfg.capacity_counts),
    )
    results["capacity"] = await capacity.run(
        bench,
        counts=list(cfg.capacity_counts),
        window_s=cfg.capacity_window_s,
        on_tick=lambda name: bench.ui.update(task, advance=1),
    )


PHASE_FUNCS = {
    "micro": phase_micro,
    "floors": phase_floors,
    "latency": phase_latency,
    "saturation": phase_saturation,
    "profile": phase_profile,
    "capacity": phase_capacity,
}
