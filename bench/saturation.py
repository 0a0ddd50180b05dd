"""The highest skip rate one app process sustains, and a profile of where its time goes.

The rate steps up over one set of connected pairs (WebSocket receivers) on a
fresh app process; a step is sustained when the app kept up (achieved >= 95%
of the rate, no error, nothing lost, no pair missing) and the skip ->
notified p99 stayed under the bound. Stepping stops at the first step that is not sustained.
The profile run repeats one step against an app process running under
pyinstrument (`profiled.py`), sampling only during the measured window.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from bench.harness import Bench
from bench.latency import Scenario

KEEP = (
    "rate_target",
    "rate_offered",
    "rate_achieved",
    "latency_ms",
    "request_ms",
    "client_lag_ms",
    "sent",
    "received",
    "lost",
    "errors",
    "dropped_no_pair",
    "in_flight_at_end",
    "unfinished",
    "skip_failures",
    "cpu_pct",
    "app_cpu_ms_per_skip",
    "skips_answered",
    "http_connections_peak",
)


def verdict(step: dict[str, Any], p99_bound_ms: float) -> tuple[bool, str]:
    lat = step["latency_ms"]
    if step["errors"] or step["skip_failures"]:
        return False, f"{step['errors']} failed skips"
    if step["lost"]:
        return False, f"{step['lost']} notifications never arrived"
    if step["dropped_no_pair"] > 0.01 * max(step["sent"], 1):
        return False, f"{step['dropped_no_pair']} arrivals found no pair"
    if step["rate_achieved"] < 0.95 * step["rate_target"]:
        return False, f"achieved {step['rate_achieved']}/s of {step['rate_target']}/s"
    if lat.get("n", 0) == 0:
        return False, "no samples"
    if lat["p99"] >= p99_bound_ms:
        return False, f"p99 {lat['p99']:.1f} ms >= {p99_bound_ms:g} ms"
    return True, "sustained"


async def run(
    bench: Bench,
    on_step: Any = None,
    *,
    workers: int = 1,
    rates: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The ladder against a fresh app: one process, or `serve --workers N` (workers > 1)."""
    cfg = bench.cfg
    # A fresh app process: what earlier phases left in it (an overloaded polling run's
    # garbage, a grown heap) must not decide this one; its GC pauses would.
    if workers > 1:
        app = await bench.start_app(
            f"saturation-app-{workers}-workers", serve_args=["--workers", str(workers)]
        )
    else:
        app = await bench.start_app("saturation-app")
    sc = Scenario(
        bench,
        name="saturation" if workers == 1 else f"saturation-{workers}-workers",
        base=app.base,
        ws_url=app.ws_url,
        pairs=cfg.sat_pairs,
        transport="ws",
        app_pid=app.pid,
        seed=5,
        app_children=workers > 1,
    )
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    await sc.setup()
    try:
        for rate in rates or cfg.sat_rates:
            step = await sc.run(rate, cfg.sat_warmup_s, cfg.sat_step_s)
            ok, why = verdict(step, cfg.sat_p99_ms)
            row = {k: step[k] for k in KEEP if k in step}
            row.update({"sustained": ok, "verdict": why})
            steps.append(row)
            if on_step:
                on_step(row)
            if ok:
                best = row
            else:
                break
            await asyncio.sleep(0.5)
    finally:
        await sc.teardown()
        app.stop()
    return {
        "workers": workers,
        "pairs": cfg.sat_pairs,
        "transport": "ws",
        "p99_bound_ms": cfg.sat_p99_ms,
        "step_s": cfg.sat_step_s,
        "steps": steps,
        "max_sustained_rate": best["rate_target"] if best else 0,
        "max_sustained_achieved": best["rate_achieved"] if best else 0,
        "max_sustained_latency_ms": best["latency_ms"] if best else None,
    }


async def profile(bench: Bench, rate: float) -> dict[str, Any]:
    """One paced run at `rate` against an app under pyinstrument; the profile summary."""
    cfg = bench.cfg
    out = bench.workdir / "profile.json"
    app = await bench.start_app(
        "profiled-app",
        wrapper=[sys.executable, "-m", "bench.profiled", str(out), "--"],
    )
    sc = Scenario(
        bench,
        name="profile",
        base=app.base,
        ws_url=app.ws_url,
        pairs=cfg.sat_pairs,
        transport="ws",
        app_pid=app.pid,
        seed=9,
    )
    try:
        await sc.setup()
        pid = app.pid
        assert pid is not None
        warm = cfg.sat_warmup_s
        started = False

        def tick(elapsed: float) -> None:
            nonlocal started
            if elapsed >= warm and not started:
                started = True
                os.kill(pid, signal.SIGUSR1)

        step = await sc.run(rate, warm, cfg.profile_s, on_tick=tick)
        os.kill(pid, signal.SIGUSR2)
        for _ in range(200):
            if out.exists():
                break
            await asyncio.sleep(0.1)
        await sc.teardown()
    finally:
        app.stop()
    summary = json.loads(out.read_text()) if out.exists() else {"error": "no profile written"}
    summary["rate_target"] = rate
    summary["run"] = {k: step[k] for k in ("rate_achieved", "latency_ms", "cpu_pct") if k in step}
    summary["profiler"] = "pyinstrument (statistical, 0.5 ms interval, async_mode=disabled)"
    summary["full_tree"] = str(out.with_suffix(".txt"))
    return summary


async def phase_saturation(bench: Bench, results: dict[str, Any]) -> None:
    """The `saturation` phase: results["saturation"], and under it `multi`, the same ladder
    against one `pushskip serve --workers N`."""
    cfg = bench.cfg

    def ladder_logger(task: Any, label: str) -> Any:
        def on_step(row: dict[str, Any]) -> None:
            bench.ui.update(task, advance=1)
            lat = row["latency_ms"]
            bench.ui.log(
                f"  {label}{row['rate_target']:g}/s: achieved {row['rate_achieved']}/s, "
                f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
                f"app CPU {row.get('app_cpu_ms_per_skip')} ms/skip -> {row['verdict']}"
            )

        return on_step

    task = bench.ui.task(
        f"saturation: stepping skips/s ({cfg.sat_pairs} pairs)", total=len(cfg.sat_rates)
    )
    results["saturation"] = await run(bench, on_step=ladder_logger(task, ""))
    bench.ui.update(task, completed=len(cfg.sat_rates))
    if cfg.sat_workers > 1 and not bench.args.url:
        rates = cfg.sat_workers_rates or cfg.sat_rates
        task = bench.ui.task(
            f"saturation: serve --workers {cfg.sat_workers} ({cfg.sat_pairs} pairs)",
            total=len(rates),
        )
        await asyncio.sleep(0.5)
        results["saturation"]["multi"] = await run(
            bench,
            on_step=ladder_logger(task, f"{cfg.sat_workers} workers: "),
            workers=cfg.sat_workers,
            rates=rates,
        )
        bench.ui.update(task, completed=len(rates))


async def phase_profile(bench: Bench, results: dict[str, Any]) -> None:
    """The `profile` phase (after `saturation`, whose result sets its rate): results["profile"]."""
    if bench.args.url:
        results["profile"] = {"skipped": "profiling needs an app process the bench starts"}
        return
    cfg = bench.cfg
    # Profile where the app still keeps up: the highest sustained step (an overloaded app
    # spends its time failing requests, which is not where a healthy one spends it).
    sustained = (results.get("saturation") or {}).get("max_sustained_rate") or 0
    rate = float(sustained) if sustained else (cfg.sat_rates[-1] if cfg.quick else cfg.sat_target)
    task = bench.ui.task(f"profile: pyinstrument at {rate:g} skips/s", total=1)
    results["profile"] = await profile(bench, rate)
    bench.ui.update(task, completed=1)
