"""Ratios, the targets, and the outputs: the JSON, docs/benchmarks.md and the PNG plots.

docs/benchmarks.md is generated whole, except the part between the
`<!-- notes:start -->` and `<!-- notes:end -->` markers, which is carried
over from the existing file: that is where people write their analysis.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

NOTES_START = "<!-- notes:start -->"
NOTES_END = "<!-- notes:end -->"
DEFAULT_NOTES = "_No notes yet: write the analysis of a run here; regenerating keeps it._"

TARGET_PAIRS = 1000


# ---- derived numbers ------------------------------------------------------------------------


def _runs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results.get("latency", []) if isinstance(r, dict)}


def _p(run: dict[str, Any] | None, q: str) -> float | None:
    if not run:
        return None
    v = run.get("latency_ms", {}).get(q)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)


def headline_pairs(results: dict[str, Any]) -> int | None:
    pairs = sorted({r["pairs"] for r in results.get("latency", []) if "pairs" in r})
    if not pairs:
        return None
    return TARGET_PAIRS if TARGET_PAIRS in pairs else pairs[-1]


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    runs = _runs(results)
    out: dict[str, Any] = {"polling_over_push": {}, "push_over_floor": {}}
    for run in runs.values():
        if run["transport"] != "ws":
            continue
        poll = runs.get(f"poll-{run['pairs']}")
        out["polling_over_push"][str(run["pairs"])] = {
            q: _ratio(_p(poll, q), _p(run, q)) for q in ("p50", "p95", "p99")
        }
    floors = results.get("floors", {})
    hp = headline_pairs(results)
    ws = runs.get(f"ws-{hp}")
    star = floors.get("starlette_push")
    red = floors.get("redis_pubsub")
    if ws:
        for q in ("p50", "p99"):
            entry: dict[str, Any] = {}
            if star:
                entry["starlette_push"] = _ratio(_p(ws, q), _p(star, q))
            if red:
                entry["redis_pubsub"] = _ratio(_p(ws, q), _p(red, q))
            if star and red:
                # The stack's own path: one HTTP->WebSocket push plus one pub/sub hop.
                both = (_p(star, q) or 0) + (_p(red, q) or 0)
                entry["starlette_plus_redis"] = _ratio(_p(ws, q), both)
            out["push_over_floor"][q] = entry
        out["push_over_floor"]["pairs"] = hp
    sat = results.get("saturation")
    if sat:
        out["saturation_over_target"] = _ratio(float(sat["max_sustained_rate"]), 1500.0)
    return out


def _last_row(results: dict[str, Any], kind: str) -> dict[str, Any] | None:
    rows = results.get("capacity", {}).get(kind, {}).get("rows", [])
    return rows[-1] if rows else None


def _gap(measured: float | None, target: float, better: str) -> str:
    """How far a measurement is from its target, in words."""
    if measured is None:
        return "not measured"
    if better == "lower":
        if measured <= target:
            return f"met with {target - measured:.3g} to spare"
        return f"missed by {measured - target:.3g} ({measured / target:.2f}x the target)"
    if measured >= target:
        return f"met ({measured / target:.2f}x the target)" if target else "met"
    return f"missed by {target - measured:.3g} ({measured / target:.0%} of the target)"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = _runs(results)
    hp = headline_pairs(results)
    ws = runs.get(f"ws-{hp}")
    rows: list[dict[str, Any]] = []

    def add(
        key: str,
        what: str,
        target: str,
        measured: float | None,
        unit: str,
        goal: float,
        better: str,
        why_not: str = "",
    ) -> None:
        met = (
            None
            if measured is None
            else (measured <= goal if better == "lower" else measured >= goal)
        )
        rows.append(
            {
                "id": key,
                "what": what,
                "target": target,
                "measured": None if measured is None else round(measured, 3),
                "unit": unit,
                "met": met,
                "gap": _gap(measured, goal, better),
                "note": why_not,
            }
        )

    add(
        "push_p50",
        f"push p50, 100 skips/s, {hp} pairs",
        "<= 1.5 ms",
        _p(ws, "p50"),
        "ms",
        1.5,
        "lower",
    )
    add(
        "push_p99",
        f"push p99, 100 skips/s, {hp} pairs",
        "<= 5 ms",
        _p(ws, "p99"),
        "ms",
        5.0,
        "lower",
    )
    # A polling run that overloaded the app (errors, lost events) has an inflated p50:
    # judge the ratio on the largest pair count whose polling run was clean.
    clean = sorted(
        (
            r["pairs"]
            for r in runs.values()
            if r["transport"] == "poll"
            and not r["errors"]
            and not r["lost"]
            and f"ws-{r['pairs']}" in runs
        ),
        reverse=True,
    )
    rp = clean[0] if clean else hp
    note = (
        ""
        if rp == hp
        else (
            f"the {hp}-pair polling run overloaded the app (errors/lost "
            f"events), so its ratio is not a fair one: judged at {rp} pairs"
        )
    )
    add(
        "push_vs_poll",
        f"polling p50 / push p50 ({rp} pairs)",
        ">= 150x",
        _ratio(_p(runs.get(f"poll-{rp}"), "p50"), _p(runs.get(f"ws-{rp}"), "p50")),
        "x",
        150.0,
        "higher",
        note,
    )
    sat = results.get("saturation")
    add(
        "saturation",
        "skips/s one process sustains with p99 < 50 ms",
        ">= 1500/s",
        float(sat["max_sustained_rate"]) if sat else None,
        "skips/s",
        1500.0,
        "higher",
    )
    wsrow = _last_row(results, "ws")
    add(
        "rss_per_ws",
        f"RSS per idle WebSocket ({wsrow['connections'] if wsrow else '-'} sockets)",
        "<= 30 KiB",
        wsrow.get("rss_kib_per_connection") if wsrow else None,
        "KiB",
        30.0,
        "lower",
    )
    add(
        "ws_per_process",
        "idle WebSockets held by one process",
        ">= 10000",
        float(wsrow["established"]) if wsrow else None,
        "sockets",
        10000.0,
        "higher",
        "" if not wsrow or not wsrow["failed"] else f"{wsrow['failed']} failed to connect",
    )
    add(
        "idle_redis",
        f"Redis commands/s for {wsrow['connections'] if wsrow else '-'} idle "
        "connected users (over the 0-user baseline)",
        "0/s",
        wsrow.get("redis_commands_per_s_over_baseline") if wsrow else None,
        "cmd/s",
        0.5,
        "lower",
        "counted as met under 0.5/s: the window's noise (the hub's 5 s watchdog probe)",
    )
    return rows


# ---- writing --------------------------------------------------------------------------------


def write(results: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    day = dt.date.today().isoformat()
    suffix = "-quick" if results.get("mode") == "quick" else ""
    json_path = out / "bench" / "results" / f"{day}{suffix}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": json_path}
    pngs: dict[str, Path] = {}
    if plots:
        try:
            pngs = write_plots(results, docs)
        except ImportError as exc:  # matplotlib missing: the numbers still stand
            results.setdefault("errors", {})["plots"] = repr(exc)
    paths.update({f"plot {k}": v for k, v in pngs.items()})
    results["outputs"] = {k: str(v.relative_to(out)) for k, v in paths.items()}
    json_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    md_path = docs / "benchmarks.md"
    notes = _existing_notes(md_path)
    md_path.write_text(markdown(results, json_path.relative_to(out), pngs, notes))
    paths["markdown"] = md_path
    return paths


def _existing_notes(path: Path) -> str:
    if not path.exists():
        return DEFAULT_NOTES
    text = path.read_text()
    if NOTES_START in text and NOTES_END in text:
        return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    return DEFAULT_NOTES


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _cpu(cpu: dict[str, Any]) -> str:
    """app / redis / client (driver+listener) / others, in % of one core."""
    return (
        f"{_f(cpu.get('app'), 0)} / {_f(cpu.get('redis'), 0)} / "
        f"{_f(cpu.get('driver'), 0)}+{_f(cpu.get('listener'), 0)} / "
        f"{_f(cpu.get('others'), 0)}"
    )


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f}x"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, Any], json_rel: Path, pngs: dict[str, Path], notes: str) -> str:
    m = results.get("machine", {})
    cfg = results.get("config", {})
    quick = results.get("mode") == "quick"
    out: list[str] = []
    w = out.append
    w("# Benchmarks\n")
    w(
        "<!-- Generated by `python -m bench` (`bench.report`). Edit only the "
        "notes section: the rest is rewritten by each run. -->\n"
    )
    if quick:
        w(
            "> **Quick run** (`--quick`): small numbers for a smoke test; not comparable with the "
            "targets.\n"
        )
    w(
        f"Run of {results.get('date')} ({results.get('mode')} mode, {results.get('duration_s')} s); "
        f"raw numbers in [`{json_rel}`](../{json_rel}).\n"
    )
    w("## How to run\n")
    w(
        "```sh\npip install -e '.[bench]'\npython -m bench            # full run, ~6 min: "
        "writes bench/results/<date>.json, docs/benchmarks.md, docs/bench-*.png\n"
        "python -m bench --quick    # smoke run, < 2 min, into a temp dir (or --out DIR)\n"
        "python -m bench --url http://127.0.0.1:8000 --redis-url unix:///path/redis.sock  "
        "# an app you run\n```\n"
    )
    w(
        "With no `--url` the bench starts a private Redis (`pushskip.embedded.EmbeddedRedis`, unix "
        "socket) and `python -m pushskip serve --port N` processes with `REDIS_URL`, "
        "`PUSHSKIP_SECRET`, `PUSHSKIP_RATE_PER_S`/`PUSHSKIP_RATE_BURST` = 1e6 (the per-user rate "
        f"limit must not shape the load), `PUSHSKIP_REMATCH_COOLDOWN_S={cfg.get('cooldown_s')}`; "
        "everything listens on 127.0.0.1 or a unix socket, every load is bounded in count and time. "
        "`--phases micro,floors,latency,saturation,profile,capacity` runs a subset, "
        "`--keep-workdir` keeps the server logs and the full profile tree.\n"
    )
    w("## Machine\n")
    pk = m.get("packages", {})
    redis = m.get("redis", {})
    w(
        _table(
            ["", ""],
            [
                ["cores", str(m.get("cores"))],
                ["CPU", m.get("cpu_model") or "–"],
                ["memory", f"{m.get('memory_gib')} GiB"],
                ["kernel / Python", f"{m.get('kernel')} / {m.get('python')}"],
                [
                    "Redis",
                    f"{redis.get('server', '–')} {redis.get('version', '')} ({redis.get('url', '')})",
                ],
                [
                    "stack",
                    ", ".join(f"{k} {v}" for k, v in pk.items() if v)
                    + "; "
                    + ", ".join(f"no {k}" for k, v in pk.items() if not v),
                ],
            ],
        )
    )
    w("")
    noise = results.get("machine_noise", {})
    if noise:
        w(
            "Other processes' CPU just before each phase (% of one core): "
            + ", ".join(f"{k} {v['others_cpu_pct']:g}" for k, v in noise.items())
            + ".\n"
        )
    w(
        f"**Client and server share this machine**: {m.get('shared_cores')}. On "
        f"{m.get('cores')} cores every client CPU-second is taken from the server, so the numbers "
        "below are a lower bound on what the app does on its own cores. The `others` CPU column "
        "is what processes outside the bench used during a phase (0 on a quiet machine).\n"
    )

    w("## Method\n")
    w(
        "- **Pairs.** Each pair is a *receiver* (its socket on `/ws?token=`, or a client polling "
        "`events?after=` every 500 ms) and a *skipper* (HTTP only). Sessions come from "
        "`POST /api/session`. The skipper sends `POST /api/simple-matching/skip "
        '{"requeue": false}`; both users then go to idle pools and are re-paired at once with '
        "another partner (the bench keeps its own copy of the rematch cooldown). Re-pairing runs "
        "the enqueue Lua script straight on Redis, pipelined, so the app's CPU goes to the skip "
        "path being measured.\n"
        "- **Latency** runs from just before the skip request is written to the moment the "
        "receiver's client has the `partner-skipped` event: the receivers live in a separate "
        "listener process (asyncio, `websockets` client / a raw HTTP keep-alive client), the "
        "skips come from this process (raw HTTP/1.1 keep-alive), both stamp `CLOCK_MONOTONIC`, "
        "and the records are joined on (receiver, room).\n"
        "- **Load** is open-loop Poisson arrivals at the given rate, after a warm-up; "
        "`client lag` is how late the driver sent a skip after its scheduled arrival (client "
        "saturation shows up there, not in the latency).\n"
        "- **Floors** use the same client code, pacing and socket count.\n"
    )

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
                    "WebSocket" if r["transport"] == "ws" else "polling 500 ms",
                    r["pairs"],
                    lat.get("n"),
                    lat.get("p50"),
                    lat.get("p95"),
                    lat.get("p99"),
                    lat.get("max"),
                    r["request_ms"].get("p50"),
                    r["lost"],
                    r["errors"],
                    _cpu(cpu),
                ]
            )
        w(
            _table(
                [
                    "transport",
                    "pairs",
                    "n",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "skip HTTP p50 ms",
                    "lost",
                    "errors",
                    "CPU % app / redis / client / others",
                ],
                rows,
            )
        )
        w("")
        rat = results.get("ratios", {})
        pr = rat.get("polling_over_push", {})
        if pr:
            w("**Push vs polling** (polling latency ÷ push latency, same run):\n")
            w(
                _table(
                    ["pairs", "p50", "p95", "p99"],
                    [
                        [int(k), _x(v.get("p50")), _x(v.get("p95")), _x(v.get("p99"))]
                        for k, v in pr.items()
                    ],
                )
            )
            w("")
        if "latency" in pngs:
            w(f"![latency CDF]({pngs['latency'].name})\n")

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
        ws = _runs(results).get(f"ws-{hp}")
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
        w(_table(["path", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "lost"], rows))
        w("")
        pf = results.get("ratios", {}).get("push_over_floor", {})
        if pf.get("p50"):
            w(
                "**pushskip ÷ floor**: "
                + "; ".join(
                    f"{q}: {_x(pf[q].get('starlette_push'))} the bare Starlette push, "
                    f"{_x(pf[q].get('starlette_plus_redis'))} Starlette push + one pub/sub hop"
                    for q in ("p50", "p99")
                    if q in pf
                )
                + ".\n"
            )

    sat = results.get("saturation")
    if sat:
        w("## Saturation: skips/s one app process sustains\n")
        w(
            f"{sat['pairs']} pairs, WebSocket receivers, a fresh app process, "
            f"{sat['step_s']} s per step after a short warm-up; the rate steps up until a step "
            "fails. A step is "
            f"sustained when the app kept up (≥ 95% of the rate, nothing lost or failed) with the "
            f"skip → notified p99 under {sat['p99_bound_ms']:g} ms. **Highest sustained: "
            f"{_f(sat['max_sustained_rate'])} skips/s.**\n"
        )
        rows = []
        for s in sat["steps"]:
            cpu = s.get("cpu_pct", {})
            rows.append(
                [
                    s["rate_target"],
                    s["rate_achieved"],
                    s["latency_ms"].get("p50"),
                    s["latency_ms"].get("p99"),
                    s["request_ms"].get("p99"),
                    s["client_lag_ms"].get("p99"),
                    _cpu(cpu),
                    ("yes" if s["sustained"] else "**no**: " + s["verdict"]),
                ]
            )
        w(
            _table(
                [
                    "target /s",
                    "achieved /s",
                    "p50 ms",
                    "p99 ms",
                    "skip HTTP p99 ms",
                    "client lag p99 ms",
                    "CPU % app / redis / client / others",
                    "sustained",
                ],
                rows,
            )
        )
        w("")
        if "saturation" in pngs:
            w(f"![saturation]({pngs['saturation'].name})\n")

    prof = results.get("profile")
    if prof and "self_by_package" in prof:
        run = prof.get("run", {})
        w("## Where the app's time goes\n")
        w(
            f"{prof.get('profiler')}, one app process at {_f(prof.get('rate_target'))} skips/s "
            f"(achieved {_f(run.get('rate_achieved'))}/s under the profiler), "
            f"{_f(prof.get('sampled_s'))} s sampled. Self time by package:\n"
        )
        w(
            _table(
                ["package", "self %"], [[r["name"], r["pct"]] for r in prof["self_by_package"][:12]]
            )
        )
        w("")
        w("Top functions by self time:\n")
        w(
            _table(
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
            _table(
                ["function", "where", "incl. %"],
                [
                    [f"`{r['name']}`", f"`{r['where']}`", r["pct"]]
                    for r in prof["inclusive_pushskip"][:10]
                ],
            )
        )
        w("")

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
                    f"{_f(r.get('cpu_pct', {}).get('app'), 0)} / {_f(p.get('cpu_pct', {}).get('app'), 0)}",
                ]
            )
        w(
            _table(
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
                f"app RSS {_f(base.get('rss_kib'))} KiB.\n"
            )
        if "capacity" in pngs:
            w(f"![capacity]({pngs['capacity'].name})\n")

    micro = results.get("micro")
    if micro and "skip_sequential" in micro:
        w("## Micro-benchmark: the Lua scripts through `Store`\n")
        w(
            micro.get("note", "") + ". Redis µs/call is Redis's own time per script call (INFO "
            "commandstats).\n"
        )
        w(
            _table(
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

    tg = results.get("targets", [])
    if tg:
        w("## Targets\n")
        rows = []
        for t in tg:
            mark = "–" if t["met"] is None else ("met" if t["met"] else "**missed**")
            rows.append(
                [
                    t["what"],
                    t["target"],
                    f"{_f(t['measured'])} {t['unit']}",
                    mark,
                    t["gap"] + (f" ({t['note']})" if t["note"] else ""),
                ]
            )
        w(_table(["target", "goal", "measured", "", "gap"], rows))
        w("")
    errs = results.get("errors")
    if errs:
        w("## Phases that failed\n")
        for k, v in errs.items():
            w(f"- `{k}`: {v}")
        w("")
    w("## Notes\n")
    w(NOTES_START)
    w(notes)
    w(NOTES_END)
    w("")
    return "\n".join(out)


# ---- plots ----------------------------------------------------------------------------------


def write_plots(results: dict[str, Any], docs: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    runs = results.get("latency", [])
    floors = results.get("floors", {})
    if runs:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        series = [
            (
                f"pushskip WebSocket, {r['pairs']} pairs"
                if r["transport"] == "ws"
                else f"polling 500 ms, {r['pairs']} pairs",
                r.get("sample_ms", []),
                "-" if r["transport"] == "ws" else "--",
            )
            for r in runs
        ]
        labels = {
            "redis_pubsub": "floor: Redis PUBLISH → subscriber",
            "starlette_push": "floor: bare Starlette POST → WebSocket",
        }
        series += [(labels.get(k, k), f.get("sample_ms", []), ":") for k, f in floors.items()]
        for label, sample, style in series:
            if not sample:
                continue
            xs = sorted(sample)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, style, label=label, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("skip → partner notified (ms, log scale)")
        ax.set_ylabel("fraction of skips")
        ax.set_title(
            f"Latency CDF at {runs[0].get('rate_target', 0):g} skips/s "
            f"({results.get('machine', {}).get('cores')} cores shared by client and server)",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = docs / "bench-latency.png"
        fig.savefig(path)
        plt.close(fig)
        written["latency"] = path

    sat = results.get("saturation")
    if sat and sat.get("steps"):
        steps = sat["steps"]
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        xs = [s["rate_target"] for s in steps]
        for q, style in (("p50", "o-"), ("p99", "s-")):
            ax.plot(
                xs,
                [s["latency_ms"].get(q, math.nan) for s in steps],
                style,
                label=f"skip → notified {q}",
            )
        ax.axhline(
            sat["p99_bound_ms"],
            color="red",
            linestyle=":",
            label=f"p99 bound {sat['p99_bound_ms']:g} ms",
        )
        ax.axvline(1500, color="grey", linestyle="--", label="target 1,500/s")
        ax.set_yscale("log")
        ax.set_xlabel("offered skips/s (Poisson)")
        ax.set_ylabel("latency (ms, log scale)")
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [s["rate_achieved"] for s in steps],
            "^--",
            color="green",
            alpha=0.6,
            label="achieved skips/s",
        )
        ax2.set_ylabel("achieved skips/s")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        ax.set_title(
            f"Saturation: one app process, {sat['pairs']} pairs over WebSocket", fontsize=10
        )
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = docs / "bench-saturation.png"
        fig.savefig(path)
        plt.close(fig)
        written["saturation"] = path

    cap = results.get("capacity")
    if cap and cap["ws"]["rows"]:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
        counts = [r["connections"] for r in cap["ws"]["rows"]]
        poll = {r["connections"]: r for r in cap["polling"]["rows"]}
        xs = list(range(len(counts)))
        width = 0.38

        def bars(
            ax: Any, values: list[float | None], offset: float, label: str, color: str, fmt: str
        ) -> None:
            heights = [v if v is not None else 0.0 for v in values]
            drawn = ax.bar(
                [x + offset for x in xs],
                [max(h, 1e-2) for h in heights],
                width,
                label=label,
                color=color,
            )
            for rect, v in zip(drawn, values, strict=True):
                ax.annotate(
                    "–" if v is None else fmt.format(v),
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )

        bars(
            a1,
            [r.get("rss_kib_per_connection") for r in cap["ws"]["rows"]],
            -width / 2,
            "idle WebSocket",
            "tab:blue",
            "{:.1f}",
        )
        bars(
            a1,
            [poll.get(c, {}).get("rss_kib_per_connection") for c in counts],
            width / 2,
            "polling client (keep-alive)",
            "tab:orange",
            "{:.1f}",
        )
        a1.axhline(30, color="red", linestyle=":", label="target 30 KiB")
        a1.set_ylabel("app RSS per client (KiB)")
        a1.set_title("App memory per client", fontsize=10)
        bars(
            a2,
            [r.get("redis_commands_per_s_over_baseline") for r in cap["ws"]["rows"]],
            -width / 2,
            "idle WebSocket",
            "tab:blue",
            "{:.1f}",
        )
        bars(
            a2,
            [poll.get(c, {}).get("redis_commands_per_s") for c in counts],
            width / 2,
            "polling, achieved rate",
            "tab:orange",
            "{:,.0f}",
        )
        # Where a polling run had no answered poll (the app failed them all), its cost at the
        # nominal rate is extrapolated from the last run's commands per answered poll.
        known = [
            poll[c]["redis_commands_per_poll"]
            for c in counts
            if poll.get(c, {}).get("redis_commands_per_poll")
        ]
        per_poll = known[-1] if known else None
        nominal = [
            poll.get(c, {}).get("redis_commands_per_s_at_nominal")
            or (per_poll * poll[c]["polls_per_s_nominal"] if per_poll and c in poll else None)
            for c in counts
        ]
        if any(nominal):
            a2.plot(
                [x + width / 2 for x in xs],
                [v or math.nan for v in nominal],
                "k_",
                markersize=18,
                label="polling at the nominal 2 polls/s each",
            )
        a2.set_yscale("log")
        a2.set_ylim(bottom=1e-2)
        a2.set_ylabel("Redis commands/s over the idle baseline (log)")
        a2.set_title("Redis cost of connected, idle users", fontsize=10)
        for ax, where in ((a1, "center right"), (a2, "center right")):
            ax.set_xticks(xs, [f"{c:,}" for c in counts])
            ax.set_xlabel("clients on one app process")
            ax.legend(fontsize=7, loc=where)
            ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        path = docs / "bench-capacity.png"
        fig.savefig(path)
        plt.close(fig)
        written["capacity"] = path
    return written
