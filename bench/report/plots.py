"""The PNG plots next to docs/benchmarks.md: latency CDF, saturation steps, capacity bars.

matplotlib is imported only here, and only when plots are asked for (the
`bench` extra); without it `files.write` records the error and writes the rest.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def write_plots(results: dict[str, Any], docs: Path) -> dict[str, Path]:
    """Write the plots the results have data for; their paths by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    for name, draw in (
        ("latency", _latency_cdf),
        ("saturation", _saturation_steps),
        ("capacity", _capacity_bars),
    ):
        path = draw(plt, results, docs)
        if path is not None:
            written[name] = path
    return written


def _latency_cdf(plt: Any, results: dict[str, Any], docs: Path) -> Path | None:
    """bench-latency.png: the CDF of every latency run and floor, log x."""
    runs = results.get("latency", [])
    floors = results.get("floors", {})
    if runs:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        series = [
            (
                f"pushskip WebSocket, {r['pairs']} pairs"
                + (", skip over the socket" if r.get("skip_via") == "ws" else "")
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
        return path
    return None


def _saturation_steps(plt: Any, results: dict[str, Any], docs: Path) -> Path | None:
    """bench-saturation.png: p50/p99 and the achieved rate at each step."""
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
        return path
    return None


def _capacity_bars(plt: Any, results: dict[str, Any], docs: Path) -> Path | None:
    """bench-capacity.png: app RSS and Redis commands/s per client, WebSocket vs polling."""
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
        a1.axhline(25, color="red", linestyle=":", label="target 25 KiB")
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
        return path
    return None
