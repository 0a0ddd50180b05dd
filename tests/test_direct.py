"""Plain routes served directly (direct.py) answer as they would through Starlette."""

from __future__ import annotations

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pushskip.app import PushskipApp
from pushskip.direct import plain_routes


class Refused(Exception):
    pass


class RefusedHarder(Refused):
    pass


async def fine(request: Request) -> Response:
    return JSONResponse({"ok": True, "direct": "router" not in request.scope})


async def refuses(request: Request) -> Response:
    raise RefusedHarder("no")


async def breaks(request: Request) -> Response:
    raise RuntimeError("bug")


async def handler_breaks(request: Request) -> Response:
    raise LookupError("x")


def sync_endpoint(request: Request) -> Response:
    return JSONResponse({"sync": True})


async def user(request: Request) -> Response:
    return JSONResponse({"user": request.path_params["who"]})


async def on_refused(request: Request, exc: Exception) -> Response:
    return JSONResponse({"refused": str(exc)}, status_code=409)


async def on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"http": exc.status_code}, status_code=exc.status_code)


async def handler_fails(request: Request, exc: Exception) -> Response:
    raise ValueError("the handler broke")


async def on_anything(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "internal"}, status_code=500)


class Forbid:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("no", status_code=403)(scope, receive, send)


def build(middleware: list[Middleware] | None = None) -> PushskipApp:
    api = [
        Route("/fine", fine, methods=["GET", "POST"]),
        Route("/refuses", refuses, methods=["POST"]),
        Route("/breaks", breaks, methods=["POST"]),
        Route("/users/{who}", user, methods=["GET"]),
        Route("/handler-breaks", handler_breaks, methods=["POST"]),
        Route("/sync", sync_endpoint, methods=["GET"]),
        Route("/guarded", fine, methods=["GET"], middleware=[Middleware(Forbid)]),
    ]
    return PushskipApp(
        routes=[Mount("/api", routes=api), Route("/top", fine)],
        middleware=middleware,
        exception_handlers={
            Refused: on_refused,
            LookupError: handler_fails,
            HTTPException: on_http,
            Exception: on_anything,
        },
    )


def client(app: PushskipApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_the_table_holds_fixed_paths_by_method_only() -> None:
    table = plain_routes(build().routes)
    assert set(table) == {
        ("GET", "/api/fine"),
        ("POST", "/api/fine"),
        ("POST", "/api/refuses"),
        ("POST", "/api/breaks"),
        ("POST", "/api/handler-breaks"),
        ("GET", "/top"),
    }


async def test_direct_answers_match_starlettes() -> None:
    async with client(build()) as c:
        got = await c.post("/api/fine")
        assert (got.status_code, got.json()) == (200, {"ok": True, "direct": True})
        # A subclass finds its base's handler, as Starlette looks it up.
        got = await c.post("/api/refuses")
        assert (got.status_code, got.json()) == (409, {"refused": "no"})
        # The last-resort handler answers, and the error still reaches the server.
        got = await c.post("/api/breaks")
        assert (got.status_code, got.json()) == (500, {"error": "internal"})
        # What the table leaves out still goes through Starlette's router.
        assert (await c.get("/api/users/ann")).json() == {"user": "ann"}
        # A handler that fails leaves it to the last-resort one, as in Starlette.
        got = await c.post("/api/handler-breaks")
        assert (got.status_code, got.json()) == (500, {"error": "internal"})
        # A sync endpoint (run in a thread) and a route's own middleware are Starlette's.
        assert (await c.get("/api/sync")).json() == {"sync": True}
        assert (await c.get("/api/guarded")).status_code == 403
        assert (await c.delete("/api/fine")).status_code == 405
        head = await c.head("/api/fine")
        assert head.status_code == 200 and head.content == b""
        assert (await c.get("/api/nowhere")).status_code == 404


async def test_the_last_resort_handler_reraises_for_the_server_to_log() -> None:
    transport = httpx.ASGITransport(app=build(), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        with pytest.raises(RuntimeError, match="bug"):
            await c.post("/api/breaks")


async def test_an_app_with_middleware_serves_everything_through_it() -> None:
    seen: list[str] = []

    async def note(request: Request, call_next):  # type: ignore[no-untyped-def]
        seen.append(request.url.path)
        return await call_next(request)

    app = build([Middleware(BaseHTTPMiddleware, dispatch=note)])
    async with client(app) as c:
        got = await c.post("/api/fine")
        assert got.json() == {"ok": True, "direct": False}
        assert (await c.post("/api/refuses")).status_code == 409
    assert seen == ["/api/fine", "/api/refuses"]


async def test_an_app_without_its_own_http_error_handler_serves_nothing_directly() -> None:
    app = PushskipApp(
        routes=[Route("/top", fine)], exception_handlers={Exception: on_anything}
    )
    async with client(app) as c:
        assert (await c.get("/top")).json() == {"ok": True, "direct": False}
