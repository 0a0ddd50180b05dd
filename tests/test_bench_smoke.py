"""`python -m bench --quick` runs end to end and writes a report with every section.

A smoke test: it starts its own private Redis and app processes (loopback
only, a few seconds per phase) and checks that the JSON has the expected
shape and sane numbers. It asserts no latency thresholds: those depend on
the machine and are what docs/benchmarks.md is for.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("rich")
pytest.importorskip("pyinstrument")

REPO = Path(__file__).resolve().parent.parent


def sane_latency(stats: dict[str, Any], *, upper_ms: float = 60_000) -> None:
    assert stats["n"] > 0, stats
    for q in ("min", "p50", "p95", "p99", "max"):
        value = stats[q]
        assert isinstance(value, (int, float)) and math.isfinite(value), (q, stats)
        assert 0 < value < upper_ms, (q, stats)
    assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"], stats


@pytest.mark.timeout(300)
def test_quick_bench_writes_a_full_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-progress", "--out", str(out)],
        check=False,
        cwd=tmp_path,  # nothing may land in the repository
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"

    reports = list((out / "bench" / "results").glob("*.json"))
    assert len(reports) == 1, reports
    report = json.loads(reports[0].read_text())
    assert report["mode"] == "quick"
    assert report["errors"] == {}
    for section in (
        "machine",
        "micro",
        "floors",
        "latency",
        "saturation",
        "profile",
        "capacity",
        "ratios",
        "targets",
    ):
        assert section in report, section
    assert report["machine"]["cores"] >= 1
    assert report["duration_s"] < 240

    # Micro-benchmark of the Lua scripts.
    for op in ("pair_sequential", "pair_pipelined", "skip_sequential", "skip_pipelined"):
        assert report["micro"][op]["ops"] > 0 and report["micro"][op]["ops_per_s"] > 0, op

    # Floors: every message arrived, with a latency.
    for floor in ("redis_pubsub", "starlette_push"):
        f = report["floors"][floor]
        assert f["lost"] == 0 and f["errors"] == 0, (floor, f)
        sane_latency(f["latency_ms"])

    # Push and polling in the same run, nothing lost, polling slower than push.
    runs = {r["name"]: r for r in report["latency"]}
    assert {r["transport"] for r in runs.values()} == {"ws", "poll"}
    for run in runs.values():
        assert run["sent"] > 0 and run["errors"] == 0 and run["lost"] == 0, run["name"]
        assert run["received"] == run["sent"], run["name"]
        assert run["listener"]["unexpected_closes"] == {}, run["name"]
        sane_latency(run["latency_ms"])
        sane_latency(run["request_ms"])
        # The app's CPU per skip, from /proc: positive and far below a second.
        assert 0 < run["app_cpu_ms_per_skip"] < 1_000, run["name"]
        assert run["skips_answered"] >= run["sent"], run["name"]
    # The skip over the skipper's own socket, at the largest pair count.
    pairs = report["config"]["latency_pairs"][-1]
    assert runs[f"wsskip-{pairs}"]["skip_via"] == "ws"
    assert runs[f"wsskip-{pairs}"]["redis_scripts_per_skip"] > 0
    pairs = report["config"]["latency_pairs"][0]
    ws, poll = runs[f"ws-{pairs}"], runs[f"poll-{pairs}"]
    assert poll["latency_ms"]["p50"] > ws["latency_ms"]["p50"]
    # A 500 ms poll cannot take much more than an interval (plus the load's own delays).
    assert poll["latency_ms"]["p50"] < 2_000
    ratio = report["ratios"]["polling_over_push"][str(pairs)]["p50"]
    assert ratio is not None and ratio > 1

    # Saturation: at least one step, each with a verdict; the profile has content.
    steps = report["saturation"]["steps"]
    assert steps and all("sustained" in s and "verdict" in s for s in steps)
    assert report["saturation"]["max_sustained_rate"] >= 0
    assert all(0 < s["app_cpu_ms_per_skip"] < 1_000 for s in steps), steps
    # The same ladder (shortened) against `serve --workers 2`, CPU read from the workers.
    multi = report["saturation"]["multi"]
    assert multi["workers"] == 2 and multi["steps"], multi
    for step in multi["steps"]:
        assert "sustained" in step and 0 < step["app_cpu_ms_per_skip"] < 1_000, step
    profile = report["profile"]
    assert profile["sampled_s"] > 0 and profile["self_by_function"], profile.get("error")

    # Capacity: every socket and poller came up; RSS and Redis counts were read.
    counts = report["config"]["capacity_counts"]
    for kind in ("ws", "polling"):
        rows = report["capacity"][kind]["rows"]
        assert [r["connections"] for r in rows] == counts
        for row in rows:
            assert row["established"] == row["connections"] and row["failed"] == 0, row
            assert row["rss_kib"] > 0 and row["rss_kib_per_connection"] is not None
            assert row["redis_commands_per_s"] is not None and row["redis_commands_per_s"] >= 0
    polling = report["capacity"]["polling"]["rows"][0]
    assert polling["polls_per_s"] > 0 and polling["redis_commands_per_poll"] > 0

    # Integrations: the same skips with webhooks off, on and unreachable, in one run.
    integ = report["integrations"]["summary"]
    assert set(integ) == {"off", "webhooks", "webhooks-down", "livekit-slow"}
    for name, item in integ.items():
        sane_latency(item["latency_ms"])
        assert item["app_cpu_ms_per_skip"] > 0, name
    assert integ["webhooks"]["p50_ratio"] > 0
    assert report["integrations"]["receiver"]["requests"] > 0
    assert report["integrations"]["livekit"]["deletes"] > 0

    # Abuse: every case ran; the churning attacker got 429s, the honest crowd all matched.
    abuse = report["abuse"]
    assert abuse["never_reading_flood"]["connections"] >= 1
    assert abuse["churning_sessions"]["attacker"]["answered_429"] > 0
    assert abuse["honest_nat"]["never_matched"] == 0
    assert 1009 in abuse["big_frame_close_codes"]

    # Redis deployments: one server and a cluster, in one run.
    for form in ("single", "cluster"):
        item = report["deployments"][form]
        sane_latency(item["latency_ms"])
        assert item["redis_cpu_ms_per_skip"] > 0 and item["steps"], form

    # Opening sockets: one at a time (latency, app CPU), and a burst beside skips.
    opening = report["socket_open"]
    sane_latency(opening["one_at_a_time"]["latency_ms"])
    assert opening["one_at_a_time"]["app_cpu_ms_per_open"] > 0
    burst = opening["at_once"]
    assert burst["burst"]["opened"] == burst["burst"]["sockets"] > 0
    sane_latency(burst["skip_notified_ms_during"])
    sane_latency(burst["skip_notified_ms_without"])

    # Targets are all evaluated, and the Markdown and plots were written next to the JSON.
    assert {t["id"] for t in report["targets"]} >= {
        "push_p50",
        "push_p99",
        "push_vs_poll",
        "saturation",
        "rss_per_ws",
        "ws_per_process",
        "idle_redis",
        "cpu_per_skip",
        "socket_skip_p50",
        "socket_skip_p99",
        "socket_open_p50",
        "socket_open_cpu",
        "socket_burst_p99",
    }
    markdown = (out / "docs" / "benchmarks.md").read_text()
    for heading in (
        "## Skip → partner notified",
        "## Floors",
        "## Saturation",
        "## Capacity",
        "## Integrations",
        "## Abuse",
        "## Redis deployments",
        "## Opening a socket",
        "## Targets",
        "app CPU ms/skip",
        "serve --workers 2",
        "<!-- notes:start -->",
    ):
        assert heading in markdown, heading
    for png in ("bench-latency.png", "bench-saturation.png", "bench-capacity.png"):
        data = (out / "docs" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, png
    # Nothing was written into the repository.
    assert (
        not any(p.name.endswith("-quick.json") for p in (REPO / "bench" / "results").glob("*"))
        if (REPO / "bench" / "results").exists()
        else True
    )
