"""The run: the machine's description, then the phases in order, each in its own module."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import (
    abuse,
    capacity,
    deployments,
    floors,
    integrations,
    latency,
    micro,
    saturation,
    socket_open,
)
from bench.harness import UI, Bench, BenchConfig

Phase = Callable[[Bench, dict[str, Any]], Awaitable[None]]

# Each phase adds its section to the results. In run order: `profile` follows
# `saturation`, whose highest sustained rate it profiles at.
PHASE_FUNCS: dict[str, Phase] = {
    "micro": micro.phase_micro,
    "floors": floors.phase_floors,
    "latency": latency.phase_latency,
    "saturation": saturation.phase_saturation,
    "profile": saturation.phase_profile,
    "capacity": capacity.phase_capacity,
    "socket_open": socket_open.phase_socket_open,
    "integrations": integrations.phase_integrations,
    "abuse": abuse.phase_abuse,
    "deployments": deployments.phase_deployments,
}
PHASES = tuple(PHASE_FUNCS)


def machine_info() -> dict[str, Any]:
    """Cores, CPU, memory, kernel, Python and the stack's package versions."""
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
    """Start the harness, run the chosen phases (a failed one is noted, the rest still run)."""
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
