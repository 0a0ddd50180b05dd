"""The Markdown section on integrations: skip -> notified with webhooks (and media rooms)
on and off, in one run (`bench.integrations`)."""

from __future__ import annotations

from typing import Any

from bench.report.tables import table

ABOUT = {
    "off": "no webhooks",
    "webhooks": "webhooks to a receiver that answers 204",
    "webhooks-down": "webhooks to a URL where nothing listens (every delivery refused, retried)",
    "livekit-slow": "LiveKit on: a token in every match, every ended room deleted, against a "
    "stand-in LiveKit answering each DeleteRoom after 2 s",
}


def integrations_section(results: dict[str, Any]) -> list[str]:
    """## Integrations: what webhooks cost the skip path."""
    found = results.get("integrations")
    if not found or "summary" not in found:
        return []
    out: list[str] = []
    w = out.append
    w("## Integrations: skip → notified with webhooks and media rooms on and off\n")
    w(
        f"{found['pairs']} pairs, skips over the skipper's socket at {found['rate']:g}/s, "
        f"{found['rounds']} round(s) of {found['duration_s']:g} s per configuration, the "
        "configurations interleaved round by round (one app process each, its own Redis "
        "database); latencies pooled over the rounds. Ratios are to `off` in the same run; "
        "the target is within 10% (p50 and p99).\n"
    )
    rows = []
    for name, item in found["summary"].items():
        lat = item["latency_ms"]
        rows.append(
            [
                f"`{name}`",
                ABOUT.get(name, name),
                lat.get("n"),
                lat.get("p50"),
                lat.get("p99"),
                _ratio(item.get("p50_ratio")),
                _ratio(item.get("p99_ratio")),
                item.get("app_cpu_ms_per_skip"),
                item.get("app_helpers_cpu_ms_per_skip", "–"),
            ]
        )
    w(
        table(
            [
                "config",
                "what",
                "skips",
                "p50 ms",
                "p99 ms",
                "p50 / off",
                "p99 / off",
                "app CPU ms/skip",
                "its child's CPU ms/skip",
            ],
            rows,
        )
        + "\n"
    )
    received = found.get("receiver") or {}
    text = (
        f"The receiver got {received.get('requests', '–')} webhook requests "
        f"({received.get('unique', '–')} distinct ids) during the `webhooks` runs."
    )
    livekit = found.get("livekit") or {}
    if livekit:
        text += (
            f" The stand-in LiveKit server was asked {livekit.get('deletes', '–')} DeleteRooms "
            f"(each answered after {livekit.get('delay_s')} s) during the `livekit-slow` runs."
        )
    w(text + "\n")
    return out


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def deployments_section(results: dict[str, Any]) -> list[str]:
    """## Redis deployments: one server against a 3-master cluster."""
    found = results.get("deployments")
    if not found or "single" not in found:
        return []
    out: list[str] = []
    w = out.append
    w("## Redis deployments: one server against a Redis Cluster\n")
    w(
        f"One app process each, on one Redis server and on a 3-master cluster (all of "
        f"pushskip in one hash slot, `{{pushskip}}`; events over sharded pub/sub), both on TCP "
        f"with AOF every second, in one run: {found['pairs']} pairs, skips over the skipper's "
        f"socket at {found['rate']:g}/s for {found['duration_s']:g} s, then a rising offered "
        "rate. Redis CPU is every server process of the deployment.\n"
    )
    rows = []
    for form in ("single", "cluster"):
        item = found.get(form)
        if not item:
            continue
        lat = item["latency_ms"]
        rows.append(
            [
                form,
                lat.get("p50"),
                lat.get("p99"),
                item.get("app_cpu_ms_per_skip"),
                item.get("redis_cpu_ms_per_skip"),
                item.get("max_sustained_achieved"),
            ]
        )
    w(
        table(
            [
                "deployment",
                "skip → notified p50 ms",
                "p99 ms",
                "app CPU ms/skip",
                "Redis CPU ms/skip",
                "skips/s at p99 < 50 ms",
            ],
            rows,
        )
        + "\n"
    )
    steps = []
    for form in ("single", "cluster"):
        for step in found.get(form, {}).get("steps", []):
            steps.append(
                [
                    form,
                    step["rate_target"],
                    step["rate_achieved"],
                    step["latency_ms"].get("p50"),
                    step["latency_ms"].get("p99"),
                    step.get("redis_cpu_ms_per_skip"),
                ]
            )
    if steps:
        w(
            table(
                [
                    "deployment",
                    "offered /s",
                    "achieved /s",
                    "p50 ms",
                    "p99 ms",
                    "Redis CPU ms/skip",
                ],
                steps,
            )
            + "\n"
        )
    return out
