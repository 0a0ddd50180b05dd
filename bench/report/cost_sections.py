"""The Markdown sections on cost: idle WebSockets vs polling clients, and the Lua scripts.

Each function returns the section's chunks (empty when the run has no such
result); `document.markdown` joins them with newlines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.tables import fmt, table


def capacity_section(results: dict[str, Any], pngs: dict[str, Path]) -> list[str]:
    """## Capacity: memory and Redis commands per idle socket and per poller."""
    out: list[str] = []
    w = out.append
    cap = results.get("capacity")
    if cap:
        w("## Capacity: idle WebSockets vs polling clients\n")
        w(
            f"One fresh app process per series; RSS is the app process's VmRSS growth over its "
            f"idle baseline ÷ connections; Redis commands/s from INFO commandstats over "
            f"{cap['window_s']} s (the bench's own INFO excluded).\n"
        )
        rows = []
        ws_rows = cap["ws"]["rows"]
        poll_rows = {r["connections"]: r for r in cap["polling"]["rows"]}
        for r in ws_rows:
            p = poll_rows.get(r["connections"], {})
            rows.append(
                [
                    r["connections"],
                    f"{r['established']:,}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                    r.get("rss_kib_per_connection"),
                    r.get("redis_commands_per_s"),
                    r.get("redis_commands_per_s_over_baseline"),
                    p.get("rss_kib_per_connection"),
                    p.get("polls_answered_per_s", p.get("polls_per_s")),
                    p.get("poll_errors_per_s"),
                    p.get("polls_per_s_nominal"),
                    p.get("redis_commands_per_s"),
                    p.get("redis_commands_per_poll"),
                    p.get("redis_commands_per_s_at_nominal"),
                    f"{fmt(r.get('cpu_pct', {}).get('app'), 0)} / {fmt(p.get('cpu_pct', {}).get('app'), 0)}",
                ]
            )
        w(
            table(
                [
                    "clients",
                    "sockets up",
                    "WS KiB/conn",
                    "WS Redis cmd/s",
                    "WS cmd/s over baseline",
                    "poll KiB/client",
                    "polls answered/s",
                    "polls failed/s",
                    "polls/s nominal",
                    "poll Redis cmd/s",
                    "cmds/answered poll",
                    "poll cmd/s at nominal",
                    "app CPU % WS / poll",
                ],
                rows,
            )
        )
        w("")
        base = cap["ws"]["baseline"]
        if base.get("redis"):
            w(
                f"Baseline with no client: {base['redis']['commands_per_s']} Redis commands/s "
                f"({', '.join(f'{k} {v}' for k, v in base['redis']['by_command_per_s'].items()) or 'none'}); "
                f"app RSS {fmt(base.get('rss_kib'))} KiB.\n"
            )
        if "capacity" in pngs:
            w(f"![capacity]({pngs['capacity'].name})\n")
    return out


def micro_section(results: dict[str, Any]) -> list[str]:
    """## Micro-benchmark: the pairing and skip scripts through `Store`."""
    out: list[str] = []
    w = out.append
    micro = results.get("micro")
    if micro and "skip_sequential" in micro:
        w("## Micro-benchmark: the Lua scripts through `Store`\n")
        w(
            micro.get("note", "") + ". Redis µs/call is Redis's own time per script call (INFO "
            "commandstats).\n"
        )
        w(
            table(
                ["operation", "ops/s", "client µs/op", "Redis µs/script call"],
                [
                    [
                        k.replace("_", " "),
                        v["ops_per_s"],
                        v["us_per_op_client"],
                        v["redis_us_per_script_call"],
                    ]
                    for k, v in micro.items()
                    if isinstance(v, dict)
                ],
            )
        )
        w("")
    return out


def socket_open_section(results: dict[str, Any]) -> list[str]:
    """## Opening a socket: upgrade -> hello, one at a time and many at once."""
    found = results.get("socket_open")
    if not found or "one_at_a_time" not in found:
        return []
    single, many = found["one_at_a_time"], found["at_once"]
    lat = single["latency_ms"]
    burst = many["burst"]
    without, during = many["skip_notified_ms_without"], many["skip_notified_ms_during"]
    out: list[str] = []
    w = out.append
    w("## Opening a socket: upgrade → hello\n")
    w(
        f"{single['opens']:,} sockets opened one after the other (token, subscription, status "
        "read, presence mark, `hello`), each kept open; latency on the client's clock from "
        "before the connect to the `hello`, app CPU over the batch per open.\n"
    )
    w(
        table(
            ["opens", "p50 ms", "p90 ms", "p99 ms", "app CPU ms per open"],
            [[single["opens"], lat.get("p50"), lat.get("p90"), lat.get("p99"),
              single.get("app_cpu_ms_per_open")]],
        )
    )
    w(
        f"\n{burst['sockets']:,} sockets opening at once (a process of its own) while "
        f"{many['pairs']} pairs skip over their sockets at {fmt(many['rate'], 0)}/s: other "
        "users' skip → notified, against the same load without the burst.\n"
    )
    w(
        table(
            ["run", "skips", "p50 ms", "p99 ms", "max ms"],
            [
                ["without the burst", without.get("n"), without.get("p50"), without.get("p99"),
                 without.get("max")],
                ["during the burst", during.get("n"), during.get("p50"), during.get("p99"),
                 during.get("max")],
            ],
        )
    )
    w(
        f"\nThe burst: {burst['opened']:,} of {burst['sockets']:,} opened, every `hello` in "
        f"{fmt(burst['all_hellos_s'])} s (open p50 {fmt(burst['open_latency_ms'].get('p50'))} ms, "
        f"p99 {fmt(burst['open_latency_ms'].get('p99'))} ms).\n"
    )
    return out
