"""Percentiles and the join of sent and received records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """n, min, mean, p50, p90, p95, p99, p99.9 and max of a sample, rounded to 3 decimals."""
    v = sorted(values)
    if not v:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(v), "min": v[0], "mean": sum(v) / len(v)}
    for q in (50, 90, 95, 99, 99.9):
        out[f"p{q:g}".replace(".", "_")] = percentile(v, q)
    out["max"] = v[-1]
    return {k: (round(x, 3) if isinstance(x, float) else x) for k, x in out.items()}


@dataclasses.dataclass(slots=True)
class Sent:
    """One request the driver sent: when it was due, sent, answered, and whether it counts."""

    t_sched_ns: int
    t_send_ns: int
    t_resp_ns: int = 0
    ok: bool = False
    measured: bool = True


def join(sent: dict[tuple[int, str], Sent], received: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Latency (ms) from just before each send to its first receipt, for measured sends."""
    first: dict[tuple[int, str], int] = {}
    for idx, room, t_ns in received:
        key = (int(idx), str(room))
        if key not in first or t_ns < first[key]:
            first[key] = int(t_ns)
    latencies: list[float] = []
    http: list[float] = []
    lag: list[float] = []
    lost = errors = 0
    for key, rec in sent.items():
        if not rec.measured:
            continue
        if not rec.ok:
            errors += 1
            continue
        lag.append((rec.t_send_ns - rec.t_sched_ns) / 1e6)
        http.append((rec.t_resp_ns - rec.t_send_ns) / 1e6)
        t = first.get(key)
        if t is None:
            lost += 1
        else:
            latencies.append((t - rec.t_send_ns) / 1e6)
    return {
        "latency_ms": summarize(latencies),
        "request_ms": summarize(http),
        "client_lag_ms": summarize(lag),
        "sent": sum(1 for r in sent.values() if r.measured),
        "received": len(latencies),
        "lost": lost,
        "errors": errors,
        "_latencies": latencies,
    }


def slim(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the raw latencies only as a small histogram-friendly sample for the plots."""
    lat = result.pop("_latencies", [])
    lat.sort()
    step = max(1, len(lat) // 2000)
    result["sample_ms"] = [round(x, 3) for x in lat[::step]]
    return result
