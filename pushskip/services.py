"""What a handler can reach: one typed object, built in the app's lifespan.

Handlers call `services(request)` (or `services(websocket)`) and get a
`Services` whose every field is typed, so mypy checks each handler → store,
hub or identity call. Nothing is reached through Starlette's untyped
`app.state` bag except this one object.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request

from pushskip.auth import TokenSigner
from pushskip.config import Settings
from pushskip.hub import Hub
from pushskip.identity import Identity
from pushskip.media import MediaProvider
from pushskip.metrics import Metrics
from pushskip.outbox import Outbox
from pushskip.presence import Presence
from pushskip.ratelimit import RateLimiter
from pushskip.redisform import Commands
from pushskip.store import Store

_ATTRIBUTE = "pushskip_services"

# An optional check before POST /api/session mints a session (a captcha, an
# account): False refuses it with 403. See create_app(session_verifier=...).
SessionVerifier = Callable[[Request], Awaitable[bool]]

# Sockets that may be opening at once past their token check (subscription, status read,
# hello; ws.py); the others wait their turn, at most OPENING_WAIT_S (then they open
# anyway, so a Redis that is away cannot build up a queue). A burst of opens (every
# client of a restarted process coming back at once) then queues for its hellos instead
# of taking the event loop from the sockets already open. With 1,000 sockets opening
# beside 100 skips/s, other users' skip -> notified p99 was 472-598 ms without turns.
# With new connections parsed as churn (churn.py, 0.5 ms a turn), 4 at a time rather
# than 16 did not move it alone (~19 ms) but did with the young collection every 5,000
# objects (heap.py): ~16 ms, the whole burst opening as fast (docs/benchmarks.md, Notes).
# An open holds its turn over about three Redis round trips: 4 at a time still open
# ~1,000 a second with Redis 1 ms away, more than the process's CPU takes.
OPENING_AT_ONCE = 4
OPENING_WAIT_S = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    metrics: Metrics
    # Mints pushskip's own session tokens (POST /api/session).
    signer: TokenSigner
    # Says whose any accepted token is (session tokens and app JWTs alike).
    identity: Identity
    user_limiter: RateLimiter
    redis: Commands
    store: Store
    hub: Hub
    presence: Presence
    outbox: Outbox
    # The media provider (LiveKit) when one is configured.
    media: MediaProvider | None = None
    session_verifier: SessionVerifier | None = None
    opening: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(OPENING_AT_ONCE)
    )

    def install(self, app: Starlette) -> None:
        setattr(app.state, _ATTRIBUTE, self)

    @staticmethod
    def uninstall(app: Starlette) -> None:
        if hasattr(app.state, _ATTRIBUTE):
            delattr(app.state, _ATTRIBUTE)


def of_app(app: Starlette) -> Services | None:
    """The app's services while its lifespan runs; None before start-up and after shutdown."""
    found = getattr(app.state, _ATTRIBUTE, None)
    return found if isinstance(found, Services) else None


def services(conn: HTTPConnection) -> Services:
    """The services of the app serving this request or socket."""
    found = of_app(conn.app)
    if found is None:
        raise RuntimeError("pushskip services are used outside the app's lifespan")
    return found
