"""The `integrations` phase: what fitting into an app's backend costs the skip path.

Skip -> partner notified (over the socket) with the same load against app
processes that differ only in their integrations, in one run, the
configurations interleaved round by round so machine noise hits them alike:

- `off`: no webhooks;
- `webhooks`: every match.created / match.ended POSTed to a receiver
  (`bench.receiver`, answering 204 at once);
- `webhooks-down`: the same, with nothing listening at the URL (every
  delivery refused, retried with backoff, the outbox growing);
- `livekit-slow`: LiveKit configured, against the stand-in LiveKit server
  (`bench.livekit_standin`) answering each DeleteRoom after 2 s: every match
  sent to a user carries a freshly minted token, every ended match's room is
  deleted (from the app's child process, whose CPU is reported beside the
  app's).

The receiver and the stand-in LiveKit server run at niceness ELSEWHERE_NICENESS:
they stand in for machines of their own (the app's backend, a LiveKit
server), and here they share the bench's cores with the app being measured
(the stand-in spends ~0.25 ms of CPU per DeleteRoom, checking its token with
the SDK). At a lower priority they still answer, but what they cost is not
taken from the app's turn.

Each configuration has its own Redis database (an outbox is per database, and
the apps must not deliver each other's entries) on the bench's Redis server.
Reported: p50/p99 (all rounds pooled), their ratio to `off`, the app's CPU per
skip cycle, and how many webhooks the receiver got.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.harness import Bench
from bench.httpc import HttpPool
from bench.latency import Scenario
from bench.procs import ServerProcess, free_port
from bench.stats import summarize

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WEBHOOK = frozenset({"webhook"})
LIVEKIT = frozenset({"livekit"})
LIVEKIT_DELAY_S = 2.0
ELSEWHERE_NICENESS = 10
ELSEWHERE = ["nice", "-n", str(ELSEWHERE_NICENESS)]


def with_db(url: str, db: int) -> str:
    """The Redis URL of database `db` on the same server (unix:// or redis://)."""
    if url.startswith("unix://"):
        return url.split("?", 1)[0] + f"?db={db}"
    head, _, _ = url.rpartition("/")
    return f"{head}/{db}"


async def phase_integrations(bench: Bench, results: dict[str, Any]) -> None:
    if bench.args.url or bench.redis_url is None:
        results["integrations"] = {"skipped": "needs the apps the bench starts (no --url)"}
        return
    cfg = bench.cfg
    receiver = ServerProcess(
        "receiver",
        [*ELSEWHERE, sys.executable, "-m", "bench.receiver", "--port", "{port}"],
        bench.child_env(),
        bench.workdir,
        health_path="/count",
    )
    await receiver.start()
    bench.apps.append(receiver)  # stopped with the others
    from bench.livekit_standin import API_KEY, API_SECRET

    standin_args = ["--port", "{port}", "--delay", str(LIVEKIT_DELAY_S)]
    standin = ServerProcess(
        "livekit-standin",
        [*ELSEWHERE, sys.executable, "-m", "bench.livekit_standin", *standin_args],
        bench.child_env(),
        bench.workdir,
        health_path="/count",
    )
    await standin.start()
    bench.apps.append(standin)
    livekit = {
        "LIVEKIT_URL": standin.base,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
    }
    hooks = {"PUSHSKIP_WEBHOOK_SECRET": WEBHOOK_SECRET, "PUSHSKIP_OUTBOX_BACKOFF_MAX_S": "30"}
    configs: list[tuple[str, frozenset[str], dict[str, str]]] = [
        ("off", frozenset(), {}),
        ("webhooks", WEBHOOK, {**hooks, "PUSHSKIP_WEBHOOK_URL": receiver.base + "/hooks"}),
        (
            "webhooks-down",
            WEBHOOK,
            {**hooks, "PUSHSKIP_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hooks"},
        ),
        ("livekit-slow", LIVEKIT, livekit),
    ]
    apps: dict[str, tuple[Any, str, frozenset[str]]] = {}
    for db, (name, outbox, env) in enumerate(configs, start=1):
        url = with_db(bench.redis_url, db)
        app = await bench.start_app(f"app-{name}", env={**env, "REDIS_URL": url})
        apps[name] = (app, url, outbox)
    if not cfg.quick:
        # One unmeasured run per app first: its first connections, script loads and the
        # first delivery bursts are start-up costs, not what a configuration costs.
        for name, _, _ in configs:
            await _run(bench, apps[name], f"{name}-warmup", seed=0, duration_s=3.0)
    pooled: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    runs: list[dict[str, Any]] = []
    order = [name for name, _, _ in configs]
    total = cfg.integration_rounds * len(order)
    task = bench.ui.task("integrations: skip -> notified, webhooks on / off", total=total)
    for round_ in range(cfg.integration_rounds):
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            result = await _run(
                bench,
                apps[name],
                f"{name}-r{round_ + 1}",
                seed=round_ + 7,
                duration_s=cfg.integration_duration_s,
            )
            latencies = result.pop("_latencies", [])
            pooled[name].extend(latencies)
            runs.append(
                {
                    "config": name,
                    "round": round_ + 1,
                    "latency_ms": result["latency_ms"],
                    "lost": result["lost"],
                    "errors": result["errors"],
                    "app_cpu_ms_per_skip": result["app_cpu_ms_per_skip"],
                    "app_helpers_cpu_ms_per_skip": result.get("app_helpers_cpu_ms_per_skip"),
                    "skips_answered": result["skips_answered"],
                }
            )
            lat = result["latency_ms"]
            bench.ui.log(
                f"  {name} round {round_ + 1}: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
                f"app CPU {result['app_cpu_ms_per_skip']} ms/skip"
            )
            bench.ui.update(task, advance=1)
    summary: dict[str, Any] = {}
    for name in order:
        lat = summarize(pooled[name])
        cpu = [r["app_cpu_ms_per_skip"] for r in runs if r["config"] == name]
        helpers = [r["app_helpers_cpu_ms_per_skip"] or 0.0 for r in runs if r["config"] == name]
        summary[name] = {
            "latency_ms": lat,
            "app_cpu_ms_per_skip": round(sum(c for c in cpu if c) / max(1, len(cpu)), 3),
            # The app's child processes (offload.py): LiveKit's deliveries, off its loop.
            "app_helpers_cpu_ms_per_skip": round(sum(helpers) / max(1, len(helpers)), 3),
        }
    base_lat = summary["off"]["latency_ms"]
    for name in order[1:]:
        lat = summary[name]["latency_ms"]
        for q in ("p50", "p99"):
            if base_lat.get(q) and lat.get(q):
                summary[name][f"{q}_ratio"] = round(lat[q] / base_lat[q], 3)
    received = await _count(receiver.base)
    deletions = await _count(standin.base)
    results["integrations"] = {
        "rate": cfg.latency_rate,
        "pairs": cfg.integration_pairs,
        "rounds": cfg.integration_rounds,
        "duration_s": cfg.integration_duration_s,
        "summary": summary,
        "runs": runs,
        "receiver": received,
        "livekit": {"delay_s": LIVEKIT_DELAY_S, **deletions},
    }


async def _run(
    bench: Bench,
    app: tuple[Any, str, frozenset[str]],
    name: str,
    *,
    seed: int,
    duration_s: float,
) -> dict[str, Any]:
    """One latency run against one configuration's app."""
    process, url, outbox = app
    cfg = bench.cfg
    sc = Scenario(
        bench,
        name=name,
        base=process.base,
        ws_url=process.ws_url,
        pairs=cfg.integration_pairs,
        transport="ws",
        app_pid=process.pid,
        seed=seed,
        skip_via="ws",
        redis_url=url,
        outbox=outbox,
    )
    await sc.setup()
    try:
        return await sc.run(cfg.latency_rate, cfg.latency_warmup_s, duration_s)
    finally:
        await sc.teardown()


async def _count(base: str) -> dict[str, Any]:
    """A helper server's `GET /count`."""
    pool = HttpPool(base, size=1)
    try:
        _, body = await pool.request("GET", "/count")
        return dict(json.loads(body))
    finally:
        pool.close()
