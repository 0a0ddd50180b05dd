"""The Markdown section on abuse: what hostile clients cost everyone else (`bench.abuse`)."""

from __future__ import annotations

from typing import Any

from bench.report.tables import fmt, table


def abuse_section(results: dict[str, Any]) -> list[str]:
    """## Abuse: floods, churning sessions, an honest NAT."""
    found = results.get("abuse")
    if not found or "skip_notified_idle" not in found:
        return []
    out: list[str] = []
    w = out.append
    w("## Abuse: what hostile clients cost everyone else\n")
    w(
        "One app with its default limits (`python -m bench.abuse` runs the same alone). Skip → "
        "notified is another pair's, one skip at a time.\n"
    )
    nr = found["never_reading_flood"]
    idle, reading = found["skip_notified_idle"], found["skip_notified_during_ping_flood"]
    rows = [
        ["idle", "–", idle.get("p50_ms"), idle.get("p99_ms"), "–", "–"],
        [
            "ping flood, reconnecting and reading",
            f"{found['flood_pings_sent']:,} pings",
            reading.get("p50_ms"),
            reading.get("p99_ms"),
            "–",
            "–",
        ],
        [
            f"ping flood, never reading, {fmt(nr['flood_s'], 0)} s",
            f"{nr['connections']:,} connections",
            nr["skip_notified_during"].get("p50_ms"),
            nr["skip_notified_during"].get("p99_ms"),
            nr["healthz_during"].get("p99_ms"),
            nr.get("app_cpu_back_under_10pct_after_s"),
        ],
    ]
    w(
        table(
            [
                "case",
                "attacker",
                "skip → notified p50 ms",
                "p99 ms",
                "/healthz p99 ms",
                "app CPU < 10% after (s)",
            ],
            rows,
        )
        + "\n"
    )
    w(
        f"App CPU during the never-reading flood: {nr.get('app_cpu_pct_during_mean')}% of a "
        "core (it reconnects whenever dropped); targets: `/healthz` p99 ≤ 50 ms, skip → "
        f"notified p50 ≤ 10 ms, CPU under 10% within 1 s of the last close. "
        f"{found['frames_of_16_mb']} frames of 16 MB: RSS "
        f"{found['rss_kib_before_big_frames']:,} → "
        f"{found['rss_kib_after_frames_of_16_mb']:,} KiB, closed with "
        f"{found['big_frame_close_codes']}.\n"
    )
    churn = found["churning_sessions"]
    attacker = churn["attacker"]
    w(
        f"**Churning sessions**: {attacker['sessions']} sessions from one address tried "
        f"{attacker['enqueues_per_s']:,} enqueues/s ({attacker['answered_429']:,} answered 429; "
        f"{attacker['bot_meetings']:,} bot-bot meetings, {attacker['held_others']} real users "
        f"held). Two real users from other addresses met each other after "
        f"{churn['meet_s']} s (median {churn['meet_median_s']} s; targets: each ≤ 2 s, "
        "median ≤ 1 s).\n"
    )
    crowd = found["honest_nat"]
    w(
        f"**Honest NAT**: {crowd['users']['nat']} users behind one address and "
        f"{crowd['users']['others']} from others, each skipping 2–6 s after every match, for "
        f"{fmt(crowd['seconds'], 0)} s: {crowd['never_matched']} never matched; "
        f"{crowd['matches']['nat']:,} / {crowd['matches']['others']:,} matches; median wait "
        f"{crowd['wait_median_s']['nat']} s / {crowd['wait_median_s']['others']} s, p90 "
        f"{crowd['wait_p90_s']['nat']} s / {crowd['wait_p90_s']['others']} s (target: median ≤ "
        "2 s for both).\n"
    )
    return out
