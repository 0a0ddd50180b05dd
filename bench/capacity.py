"""Idle WebSockets per process, against the same number of clients polling every 500 ms.

For each count the app process's VmRSS is read before and after (RSS per
connection = growth / connections), and Redis's INFO commandstats is read
over a fixed window (commands/s; the bench's own INFO calls excluded). The
0-connection window is the baseline: the hub's watchdog publishes a probe
every few seconds whatever the number of users.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import Bench
from bench.procs import CpuMeter, rss_kib

SETTLE_S = 2.0
IGNORED_COMMANDS = {"info"}


async def redis_window(bench: Bench, seconds: float) -> dict[str, Any] | None:
    """Commands Redis ran during `seconds` (all clients but our INFO), per second."""
    if bench.redis is None:
        await asyncio.sleep(seconds)
        return None
    before = await bench.redis.info("commandstats")
    mem0 = (await bench.redis.info("memory"))["used_memory"]
    await asyncio.sleep(seconds)
    after = await bench.redis.info("commandstats")
    mem1 = (await bench.redis.info("memory"))["used_memory"]
    by_cmd: dict[str, int] = {}
    for key, stats in after.items():
        name = key.removeprefix("cmdstat_")
        if name in IGNORED_COMMANDS:
            continue
        delta = int(stats["calls"]) - int(before.get(key, {}).get("calls", 0))
        if delta:
            by_cmd[name] = delta
    total = sum(by_cmd.values())
    return {
        "window_s": seconds,
        "commands": total,
        "commands_per_s": round(total / seconds, 2),
        "by_command_per_s": {
            k: round(v / seconds, 2) for k, v in sorted(by_cmd.items(), key=lambda kv: -kv[1])[:8]
        },
        "used_memory_bytes": int(mem1),
        "used_memory_delta_bytes": int(mem1) - int(mem0),
    }


def derive_poll_row(
    row: dict[str, Any], baseline: dict[str, Any] | None, window_s: float, interval_s: float
) -> None:
    """Rates from a polling window's raw counts.

    A failed poll (a 503, an error) costs Redis nothing, so the cost of polling is
    commands per *answered* poll, times the rate the clients would poll at.
    """
    n = row["connections"]
    polls, errors = row["polls"], row["poll_errors"]
    answered = max(polls - errors, 0)
    nominal = n / interval_s
    window = row.get("redis")
    row.update(
        {
            "polls_per_s": round(polls / window_s, 1),
            "polls_answered_per_s": round(answered / window_s, 1),
            "poll_errors_per_s": round(errors / window_s, 1),
            "polls_per_s_nominal": nominal,
            "poll_rate_achieved_pct": round(100 * answered / window_s / nominal, 1),
            "redis_commands_per_poll": (
                round((window["commands"] - baseline["commands"]) / answered, 2)
                if window and baseline and answered
                else None
            ),
        }
    )
    per_poll = row["redis_commands_per_poll"]
    row["redis_commands_per_s_at_nominal"] = round(per_poll * nominal) if per_poll else None


async def _series(
    bench: Bench, kind: str, counts: list[int], window_s: float, on_tick: Any
) -> dict[str, Any]:
    app = await bench.start_app(f"capacity-{kind}")
    listener = bench.listener
    try:
        await asyncio.sleep(1.0)
        rss0 = rss_kib(app.pid)
        baseline = await redis_window(bench, window_s)
        mem0 = (await bench.redis.info("memory"))["used_memory"] if bench.redis else None
        users = await bench.sessions(app.base, max(counts), local=True)
        rows: list[dict[str, Any]] = []
        have = 0
        for n in counts:
            batch = users[have:n]
            if kind == "ws":
                got = await listener.call(
                    "ws_connect",
                    url=app.ws_url,
                    timeout_s=600,
                    concurrency=200,
                    users=[[have + i, f"token={tok}"] for i, (_, tok) in enumerate(batch)],
                )
                failed, errors = got["failed"], got["errors"]
            else:
                got = await listener.call(
                    "poll_start",
                    base=app.base,
                    timeout_s=600,
                    interval_s=bench.cfg.poll_interval_s,
                    users=[[have + i, tok] for i, (_, tok) in enumerate(batch)],
                )
                failed, errors = got["failed"], got["errors"]
            have = n
            setup_s = got.get("elapsed_s")
            await asyncio.sleep(SETTLE_S)
            c0 = await listener.call("counters")
            meter = CpuMeter(bench.pids(app=app.pid)).start()
            window = await redis_window(bench, window_s)
            cpu = meter.stop()
            c1 = await listener.call("counters")
            rss = rss_kib(app.pid)
            polls = c1["polls"] - c0["polls"]
            row: dict[str, Any] = {
                "connections": n,
                "established": c1["sockets"] if kind == "ws" else c1["pollers"],
                "failed": failed,
                "errors": errors,
                "setup_s": round(setup_s, 2) if setup_s else None,
                "rss_kib": rss,
                "rss_kib_baseline": rss0,
                "rss_kib_per_connection": round((rss - rss0) / n, 2) if rss and rss0 else None,
                "redis": window,
                "redis_commands_per_s": window["commands_per_s"] if window else None,
                "redis_commands_per_s_over_baseline": (
                    round(window["commands_per_s"] - baseline["commands_per_s"], 2)
                    if window and baseline
                    else None
                ),
                "redis_memory_bytes_per_connection": (
                    round((window["used_memory_bytes"] - mem0) / n, 1)
                    if window and mem0 is not None
                    else None
                ),
                "cpu_pct": cpu,
                "messages_in_window": c1["messages"] - c0["messages"],
                "unexpected_closes": c1["unexpected_closes"],
            }
            if kind == "poll":
                row.update(
                    {
                        "polls": polls,
                        "poll_errors": c1["poll_errors"] - c0["poll_errors"],
                        "poll_error_kinds": c1.get("poll_error_kinds"),
                        "poll_rtt_ms_mean": c1["poll_rtt_ms_mean"],
                    }
                )
                derive_poll_row(row, baseline, window_s, bench.cfg.poll_interval_s)
            rows.append(row)
            if on_tick:
                on_tick(f"{kind} {n}")
        return {"baseline": {"rss_kib": rss0, "redis": baseline}, "rows": rows}
    finally:
        await listener.call("close_all", timeout_s=600)
        app.stop()


async def run(
    bench: Bench, *, counts: list[int], window_s: float, on_tick: Any = None
) -> dict[str, Any]:
    return {
        "window_s": window_s,
        "ws": await _series(bench, "ws", counts, window_s, on_tick),
        "polling": await _series(bench, "poll", counts, window_s, on_tick),
    }


async def phase_capacity(bench: Bench, results: dict[str, Any]) -> None:
    """The `capacity` phase: results["capacity"]."""
    cfg = bench.cfg
    task = bench.ui.task(
        f"capacity: idle sockets vs pollers {list(cfg.capacity_counts)}",
        total=2 * len(cfg.capacity_counts),
    )
    results["capacity"] = await run(
        bench,
        counts=list(cfg.capacity_counts),
        window_s=cfg.capacity_window_s,
        on_tick=lambda name: bench.ui.update(task, advance=1),
    )
