"""create_app(settings): the Starlette app, with Redis clients made in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from pushskip import api, redisform, server_api, ws
from pushskip.auth import TokenSigner
from pushskip.config import Settings
from pushskip.direct import DirectRoutes
from pushskip.hub import Hub
from pushskip.identity import AppTokens, Identity
from pushskip.jwks import JwksKeys
from pushskip.link import PubSubLink
from pushskip.media import MediaProvider
from pushskip.metrics import Metrics
from pushskip.outbox import Outbox, Target
from pushskip.presence import Presence
from pushskip.ratelimit import RateLimiter
from pushskip.redisform import Commands, PubSubSource
from pushskip.retry import retry_read
from pushskip.services import Services, SessionVerifier, services
from pushskip.staticfiles import CachedStaticFiles
from pushskip.store import Store
from pushskip.webhooks import WebhookTarget

logger = logging.getLogger("pushskip.app")

PACKAGE_DIR = Path(__file__).resolve().parent
# The browser client and demo: an installed wheel carries them as
# pushskip/static/; a source checkout (and an editable install, so edits show
# without reinstalling) serves the repository's top-level static/.
STATIC_DIRS = (PACKAGE_DIR / "static", PACKAGE_DIR.parent / "static")
SHUTDOWN_STEP_S = 10.0
WS_PATH = "/ws"


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, api.ApiError)
    return error(exc.status, exc.message)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), exc.headers)  # keeps a 405's Allow


async def on_redis_down(request: Request, exc: Exception) -> Response:
    logger.warning("Redis unreachable during %s %s: %r", request.method, request.url.path, exc)
    return error(503, api.REDIS_DOWN)


async def on_client_gone(request: Request, exc: Exception) -> Response:
    # The client dropped its request mid-body: no one reads this answer, and it
    # is not the server's fault (no traceback, no 500 in the logs).
    logger.debug("client left during %s %s", request.method, request.url.path)
    return error(400, "Client disconnected")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error(500, "Internal server error")


class PushskipApp(Starlette):
    """The app: Starlette, with `/ws` and the plain HTTP routes handed straight to their
    endpoints (direct.py has how the HTTP ones keep their error handling).

    An open socket holds its coroutine chain for as long as it is open, and
    Starlette's layers (error and exception middleware, router, route, session,
    two exception wrappers) are ~4 KiB of each idle socket's ~25, and a tenth of
    the CPU of opening one. The endpoint handles its own failures (it closes the
    socket with a code); whatever else it raises reaches uvicorn, which logs it
    and drops the connection, as it did through Starlette's middleware (whose
    handlers serve HTTP requests only). Matched on the path as uvicorn gives it:
    the server sets no root path.
    """

    _direct: DirectRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            direct = self._direct
            if direct is None:  # made on the first request: routes and handlers are final
                direct = self._direct = DirectRoutes.of(self)
            endpoint = direct.find(scope)
            if endpoint is not None:
                scope["app"] = self
                await direct.serve(endpoint, scope, receive, send)
                return
        elif kind == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = self
            await ws.websocket_endpoint(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


async def healthz(request: Request) -> Response:
    found = services(request)
    await retry_read(found.redis.ping)
    # pid: which process answered (with `pushskip serve --workers N`, one of N).
    return JSONResponse(
        {"success": True, "redis": "ok", "hub": found.hub.ready, "pid": os.getpid()}
    )


def redis_clients(settings: Settings) -> tuple[Commands, PubSubSource]:
    """The command client, and where the pub/sub connection goes (redisform.py)."""
    if not settings.redis_url:
        raise ValueError("Settings.redis_url is required (the CLI starts a private server)")
    return redisform.clients(settings.redis_url, settings.redis_timeout_s)


def media_provider(settings: Settings) -> MediaProvider | None:
    """The media provider the settings configure (its SDK is imported only then)."""
    if not (settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret):
        return None
    from pushskip.livekit import LiveKit

    return LiveKit(
        settings.livekit_url,
        settings.livekit_api_key,
        settings.livekit_api_secret,
        token_ttl_s=settings.media_token_ttl_s,
    )


def outbox_targets(settings: Settings, media: MediaProvider | None) -> list[Target]:
    """The outbox targets the settings configure: webhooks, and media room deletion."""
    targets: list[Target] = []
    if settings.webhook_url and settings.webhook_secret:
        targets.append(WebhookTarget(settings.webhook_url, settings.webhook_secret))
    if media is not None:
        targets.append(media.rooms)
    return targets


def app_tokens(settings: Settings) -> AppTokens | None:
    """The app's JWTs, when the settings accept them."""
    if not settings.app_tokens:
        return None
    return AppTokens(
        secret=settings.jwt_secret,
        jwks=JwksKeys(settings.jwks_url) if settings.jwks_url else None,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )


def find_static_dir() -> Path | None:
    """The first of STATIC_DIRS that exists, or None."""
    return next((d for d in STATIC_DIRS if d.is_dir()), None)


def create_app(
    settings: Settings,
    *,
    static_dir: Path | None = None,
    session_verifier: SessionVerifier | None = None,
) -> Starlette:
    """The app. `session_verifier`, if given, is awaited with each POST /api/session
    request before a session is minted; False refuses it (403)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.redis_url is not None
        redisform.use_key_names(settings.redis_url)
        redis, pubsub_source = redis_clients(settings)
        retention_ms = settings.log_retention_s * 1000
        media = media_provider(settings)
        outbox = Outbox(
            redis,
            outbox_targets(settings, media),
            metrics,
            retention_ms=retention_ms,
            lease_s=settings.outbox_lease_s,
            retry_s=settings.webhook_retry_s,
            backoff_max_s=settings.outbox_backoff_max_s,
            max_pending=settings.outbox_max_pending,
        )
        app_jwts = app_tokens(settings)
        signer = TokenSigner(settings.secret, ttl_s=settings.token_ttl_s)
        link = PubSubLink(
            redis, pubsub_source, metrics, watchdog_interval_s=settings.watchdog_interval_s
        )
        hub = Hub(
            link,
            metrics,
            queue_size=settings.ws_send_queue,
            slow_send_s=settings.ws_slow_send_s,
            max_per_user=settings.max_sockets_per_user,
        )
        presence = Presence(
            redis,
            grace_s=settings.presence_grace_s,
            lease_s=settings.presence_lease_s,
            sweep_s=settings.presence_sweep_s,
            cooldown_s=settings.rematch_cooldown_s,
            retention_ms=retention_ms,
            outbox=outbox.names,
            on_change=outbox.wake,
        )
        built = Services(
            settings=settings,
            metrics=metrics,
            signer=signer,
            identity=Identity(signer, app_jwts),
            user_limiter=RateLimiter(rate_per_s=settings.rate_per_s, burst=settings.rate_burst),
            redis=redis,
            store=Store(
                redis,
                stale_s=settings.queue_stale_s,
                cooldown_s=settings.rematch_cooldown_s,
                retention_s=settings.log_retention_s,
                max_waiting_per_address=settings.max_waiting_per_address,
                metrics=metrics,
                outbox=outbox.names,
                on_change=outbox.wake,
                grace_s=settings.presence_grace_s,
                enqueue_rate=settings.enqueue_rate_per_address,
            ),
            hub=hub,
            presence=presence,
            outbox=outbox,
            media=media,
            session_verifier=session_verifier,
        )
        built.install(app)
        jwks = app_jwts.jwks if app_jwts is not None else None
        if jwks is not None:
            await jwks.start()
        await hub.start()
        await presence.start()
        await outbox.start()
        if media is not None:
            await media.start()
        try:
            yield
        finally:
            # Each step is bounded: uvicorn waits for the lifespan without a limit,
            # and a process that cannot stop is worse than one that skips a goodbye.
            steps = [outbox.stop, presence.stop, hub.stop, pubsub_source.aclose, redis.aclose]
            if jwks is not None:
                steps.insert(0, jwks.stop)
            if media is not None:
                steps.insert(0, media.aclose)
            for step in steps:
                try:
                    async with asyncio.timeout(SHUTDOWN_STEP_S):
                        await step()
                except TimeoutError:
                    logger.error("shutdown step %s took over %ss; going on", step, SHUTDOWN_STEP_S)
            Services.uninstall(app)

    static = static_dir if static_dir is not None else find_static_dir()
    routes = [
        *api.routes(
            [
                *(server_api.routes() if settings.api_key else ()),
                *(api.media_routes() if settings.livekit else ()),
            ]
        ),
        WebSocketRoute(WS_PATH, ws.websocket_endpoint),  # PushskipApp takes it first
        Route("/metrics", metrics.endpoint),
        Route("/healthz", healthz),
    ]
    if static is not None and static.is_dir():
        routes.append(Mount("/", CachedStaticFiles(directory=static, html=True), name="static"))
    else:
        looked_in = (static_dir,) if static_dir is not None else STATIC_DIRS
        logger.warning(
            "no static directory (looked in %s): / and /pushskip.js will answer 404",
            ", ".join(str(d) for d in looked_in),
        )
    return PushskipApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            api.ApiError: on_api_error,
            HTTPException: on_http_error,
            RedisConnectionError: on_redis_down,
            RedisTimeoutError: on_redis_down,
            ClientDisconnect: on_client_gone,
            Exception: on_unexpected,
        },
    )
