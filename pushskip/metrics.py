"""Prometheus metrics, one registry per app (so several apps share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from pushskip import closing
from pushskip.heap import HEAP

# Skip→publish is one Lua script on a local Redis: sub-millisecond is normal.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class OutboxMetrics:
    """One outbox target's counters and gauges (children of labelled metrics)."""

    __slots__ = ("delivered", "dropped", "oldest_age", "pending", "retried")

    def __init__(self, metrics: Metrics, target: str) -> None:
        self.delivered = metrics.outbox_delivered.labels(target)
        self.retried = metrics.outbox_retried.labels(target)
        self.dropped = metrics.outbox_dropped.labels(target)
        self.pending = metrics.outbox_pending.labels(target)
        self.oldest_age = metrics.outbox_oldest_age.labels(target)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sockets = Gauge("pushskip_ws_connected_sockets", "Open WebSockets", registry=r)
        self.subscribed_users = Gauge(
            "pushskip_hub_subscribed_users", "Users whose channel this process listens to",
            registry=r,
        )
        self.delivered = Counter(
            "pushskip_events_delivered", "Events sent live over WebSockets", registry=r
        )
        self.replayed = Counter(
            "pushskip_events_replayed", "Events sent from the log (replay, gap fill)", registry=r
        )
        # One counter per close reason: pushskip_ws_<metric>_closes_total.
        self.closes = {
            reason.metric: Counter(
                f"pushskip_ws_{reason.metric}_closes",
                f"Sockets closed {reason.code}: {reason.about}",
                registry=r,
            )
            for reason in closing.REASONS
        }
        self.resets = Counter(
            "pushskip_ws_resets",
            "Hellos with reset: the client's log epoch was gone (expired, or lost by Redis)",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "pushskip_hub_redis_reconnects", "Pub/sub connections re-established", registry=r
        )
        self.deaf_recoveries = Counter(
            "pushskip_hub_deaf_recoveries", "Pub/sub listeners found deaf by the watchdog",
            registry=r,
        )
        self.skip_publish_seconds = Histogram(
            "pushskip_skip_publish_seconds",
            "Time of the skip script: flags, event append and PUBLISH",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # The outbox (outbox.py), per target: webhook, and media providers.
        self.outbox_delivered = Counter(
            "pushskip_outbox_delivered", "Outbox entries delivered", ["target"], registry=r
        )
        self.outbox_retried = Counter(
            "pushskip_outbox_retried",
            "Outbox delivery attempts that failed and were scheduled again",
            ["target"],
            registry=r,
        )
        self.outbox_dropped = Counter(
            "pushskip_outbox_dropped",
            "Outbox entries given up: not delivered within the retry window, or beyond the "
            "outbox's size limit",
            ["target"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "pushskip_outbox_pending",
            "Undelivered outbox entries in Redis (all processes)",
            ["target"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "pushskip_outbox_oldest_age_seconds",
            "Age of the oldest undelivered outbox entry (all processes; 0 when none)",
            ["target"],
            registry=r,
        )
        # The process's heap (heap.py): read when scraped.
        Gauge(
            "pushskip_heap_kept_objects",
            "Objects kept out of the cycle collector's sight after the last sweep "
            "(0: heap not settled)",
            registry=r,
        ).set_function(lambda: HEAP.kept_after_sweep)
        Gauge(
            "pushskip_heap_sweeps", "Full collections over the kept heap", registry=r
        ).set_function(lambda: HEAP.sweeps)
        self._outbox: dict[str, OutboxMetrics] = {}

    def outbox_counters(self, target: str) -> OutboxMetrics:
        found = self._outbox.get(target)
        if found is None:
            found = self._outbox[target] = OutboxMetrics(self, target)
        return found

    def count_close(self, reason: closing.CloseReason) -> None:
        self.closes[reason.metric].inc()

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
