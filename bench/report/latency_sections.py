"""The Markdown sections on speed: skip -> notified latency, the floors, saturation, the profile.

Each function returns the section's chunks (empty when the run has no such
result); `document.markdown` joins them with newlines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.derived import headline_pairs, latency_runs
from bench.report.tables import cpu_cell, fmt, table, times


def latency_section(results: dict[str, Any], pngs: dict[str, Path]) -> list[str]:
    """## Skip → partner notified: WebSocket and polling runs, push vs polling."""
    out: list[str] = []
    w = out.append
    cfg = results.get("config", {})
    runs = results.get("latency", [])
    if runs:
        w("## Skip → partner notified\n")
        rate = runs[0].get("rate_target")
        w(
            f"Poisson arrivals at {rate:g} skips/s, {cfg.get('latency_duration_s')} s measured "
            f"after {cfg.get('latency_warmup_s')} s of warm-up, in one app process.\n"
        )
        rows = []
        for r in runs:
            lat = r["latency_ms"]
            cpu = r.get("cpu_pct", {})
            rows.append(
                [
                    (
                        "WebSocket, skip over the socket"
                        if r.get("skip_via") == "ws"
                        else "WebSocket"
                        if r["transport"] == "ws"
                        else "polling 500 ms"
                    ),
                    r["pairs"],
                    lat.get("n"),
                    lat.get("p50"),
                    lat.get("p95"),
                    lat.get("p99"),
                    lat.get("max"),
                    r["request_ms"].get("p50"),
                    r["lost"],
                    r["errors"],
                    cpu_cell(cpu),
                    r.get("app_cpu_ms_per_skip"),
                ]
            )
        w(
            table(
                [
                    "transport",
                    "pairs",
                    "n",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "skip reply p50 ms",
                    "lost",
                    "errors",
                    "CPU % app / redis / client / others",
                    "app CPU ms/skip",
                ],
                rows,
            )
        )
        w("")
        w(
            "`app CPU ms/skip`: the app process's CPU time (utime + stime, /proc) over the run, "
            "warm-up included, ÷ the skips it answered in that time: one skip, its push and the "
            "re-pair's `matched` events pushed to the users' sockets (the bench re-pairs on Redis).\n"
        )
        rat = results.get("ratios", {})
        pr = rat.get("polling_over_push", {})
        if pr:
            w("**Push vs polling** (polling latency ÷ push latency, same run):\n")
            w(
                table(
                    ["pairs", "p50", "p95", "p99"],
                    [
                        [int(k), times(v.get("p50")), times(v.get("p95")), times(v.get("p99"))]
                        for k, v in pr.items()
                    ],
                )
            )
            w("")
        if "latency" in pngs:
            w(f"![latency CDF]({pngs['latency'].name})\n")
    return out


def floors_section(results: dict[str, Any]) -> list[str]:
    """## Floors: the bare stack's paths next to pushskip's."""
    out: list[str] = []
    w = out.append
    floors = results.get("floors")
    if floors:
        w("## Floors: what the stack alone does\n")
        rows = []
        names = {
            "redis_pubsub": "Redis PUBLISH → redis-py asyncio subscriber",
            "starlette_push": "bare Starlette: HTTP POST → WebSocket send",
        }
        for key, f in floors.items():
            lat = f["latency_ms"]
            rows.append(
                [
                    names.get(key, key),
                    lat.get("n"),
                    lat.get("p50"),
                    lat.get("p95"),
                    lat.get("p99"),
                    lat.get("max"),
                    f["lost"],
                ]
            )
        hp = headline_pairs(results)
        ws = latency_runs(results).get(f"ws-{hp}")
        if ws:
            lat = ws["latency_ms"]
            rows.append(
                [
                    f"**pushskip** skip → WebSocket ({hp} pairs)",
                    lat.get("n"),
                    lat.get("p50"),
                    lat.get("p95"),
                    lat.get("p99"),
                    lat.get("max"),
                    ws["lost"],
                ]
            )
        w(table(["path", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "lost"], rows))
        w("")
        pf = results.get("ratios", {}).get("push_over_floor", {})
        if pf.get("p50"):
            w(
                "**pushskip ÷ floor**: "
                + "; ".join(
                    f"{q}: {times(pf[q].get('starlette_push'))} the bare Starlette push, "
                    f"{times(pf[q].get('starlette_plus_redis'))} Starlette push + one pub/sub hop"
                    for q in ("p50", "p99")
                    if q in pf
                )
                + ".\n"
            )
    return out


def saturation_section(results: dict[str, Any], pngs: dict[str, Path]) -> list[str]:
    """## Saturation: the rate steps and the highest sustained rate."""
    out: list[str] = []
    w = out.append
    sat = results.get("saturation")
    if sat:
        w("## Saturation: skips/s one app process sustains\n")
        w(
            f"{sat['pairs']} pairs, WebSocket receivers, a fresh app process, "
            f"{sat['step_s']} s per step after a short warm-up; the rate steps up until a step "
            "fails. A step is "
            f"sustained when the app kept up (≥ 95% of the rate, nothing lost or failed) with the "
            f"skip → notified p99 under {sat['p99_bound_ms']:g} ms. **Highest sustained: "
            f"{fmt(sat['max_sustained_rate'])} skips/s.**\n"
        )
        w(_steps_table(sat["steps"]))
        w("")
        multi = sat.get("multi")
        if multi:
            w(f"### The same ladder against `pushskip serve --workers {multi['workers']}`\n")
            w(
                f"One supervisor and {multi['workers']} worker processes on one port, a fresh "
                "start; app CPU is the workers' (the supervisor's children). **Highest "
                f"sustained: {fmt(multi['max_sustained_rate'])} skips/s** (one process: "
                f"{fmt(sat['max_sustained_rate'])} skips/s in this run).\n"
            )
            w(_steps_table(multi["steps"]))
            w("")
        if "saturation" in pngs:
            w(f"![saturation]({pngs['saturation'].name})\n")
    return out


def _steps_table(steps: list[dict[str, Any]]) -> str:
    rows = []
    for s in steps:
        cpu = s.get("cpu_pct", {})
        rows.append(
            [
                s["rate_target"],
                s["rate_achieved"],
                s["latency_ms"].get("p50"),
                s["latency_ms"].get("p99"),
                s["request_ms"].get("p99"),
                s["client_lag_ms"].get("p99"),
                cpu_cell(cpu),
                s.get("app_cpu_ms_per_skip"),
                ("yes" if s["sustained"] else "**no**: " + s["verdict"]),
            ]
        )
    return table(
        [
            "target /s",
            "achieved /s",
            "p50 ms",
            "p99 ms",
            "skip HTTP p99 ms",
            "client lag p99 ms",
            "CPU % app / redis / client / others",
            "app CPU ms/skip",
            "sustained",
        ],
        rows,
    )


def profile_section(results: dict[str, Any]) -> list[str]:
    """## Where the app's time goes: the pyinstrument summary."""
    out: list[str] = []
    w = out.append
    prof = results.get("profile")
    if prof and "self_by_package" in prof:
        run = prof.get("run", {})
        w("## Where the app's time goes\n")
        w(
            f"{prof.get('profiler')}, one app process at {fmt(prof.get('rate_target'))} skips/s "
            f"(achieved {fmt(run.get('rate_achieved'))}/s under the profiler), "
            f"{fmt(prof.get('sampled_s'))} s sampled. Self time by package:\n"
        )
        w(
            table(
                ["package", "self %"], [[r["name"], r["pct"]] for r in prof["self_by_package"][:12]]
            )
        )
        w("")
        w("Top functions by self time:\n")
        w(
            table(
                ["function", "where", "self %"],
                [
                    [f"`{r['name']}`", f"`{r['where']}`", r["pct"]]
                    for r in prof["self_by_function"][:15]
                ],
            )
        )
        w("")
        w("pushskip functions by inclusive time:\n")
        w(
            table(
                ["function", "where", "incl. %"],
                [
                    [f"`{r['name']}`", f"`{r['where']}`", r["pct"]]
                    for r in prof["inclusive_pushskip"][:10]
                ],
            )
        )
        w("")
    return out
