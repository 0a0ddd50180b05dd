"""Plain routes served without Starlette's middleware and router.

A request through Starlette passes two middleware layers, the router's and the
mount's path matching and two exception wrappers before it reaches its
endpoint: about a tenth of the CPU of a skip or an enqueue. Every route at a
fixed path whose endpoint is a plain `async def (request) -> Response` is
looked up here by (method, path) instead, and its exceptions go to the app's
own handlers the way Starlette would send them: a handler registered for a
class answers for it and its subclasses, and one registered for `Exception`
answers the rest and re-raises, so the server still logs the failure.
Anything else (HEAD, a wrong method, static files, a path with parameters)
goes through Starlette as before, and so does every route of an app these
would not serve alike: one with middleware (its own, a route's or a mount's),
`debug`, a body size limit, handlers keyed by status code, or no handler of its
own for HTTPException. The table is made on the app's first request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
# What Starlette's Route makes of a function endpoint, before any middleware of the route's.
PLAIN_ROUTE_APP = "request_response.<locals>.app"


def plain_routes(routes: Iterable[BaseRoute], prefix: str = "") -> dict[tuple[str, str], Endpoint]:
    """(method, full path) -> endpoint for each fixed-path function route, mounts included."""
    table: dict[tuple[str, str], Endpoint] = {}
    for route in routes:
        if isinstance(route, Mount) and "{" not in route.path and isinstance(route.app, Router):
            # (a Mount wrapped in middleware has something else as its app: left to Starlette)
            table.update(plain_routes(route.routes, prefix + route.path))
        elif (
            isinstance(route, Route)
            and not route.param_convertors
            and inspect.iscoroutinefunction(route.endpoint)
            and getattr(route.app, "__qualname__", "") == PLAIN_ROUTE_APP  # no route middleware
            and route.methods
        ):
            for method in route.methods - {"HEAD"}:
                table.setdefault((method, prefix + route.path), route.endpoint)
    return table


class DirectRoutes:
    """Serves the requests `plain_routes` found, with the app's exception handlers."""

    def __init__(
        self,
        routes: Iterable[BaseRoute],
        handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        servable = all(isinstance(k, type) for k in handlers) and HTTPException in handlers
        self.endpoints = plain_routes(routes) if servable else {}
        self._handlers = dict(handlers)
        self._last_resort = self._handlers.pop(Exception, None)

    @classmethod
    def of(cls, app: Starlette) -> DirectRoutes:
        """The app's direct routes: none when the app has anything a direct call would skip."""
        limited = getattr(app, "max_body_size", None) is not None  # Starlette >= 1.x
        alike = not (app.user_middleware or app.debug or limited)
        return cls(app.routes if alike else (), app.exception_handlers)

    def find(self, scope: Scope) -> Endpoint | None:
        return self.endpoints.get((scope["method"], scope["path"]))

    async def serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            try:
                if handler is None:
                    raise
                response = await handler(request, exc)
            except Exception as failed:  # unhandled, or its handler failed
                if self._last_resort is not None:
                    await (await self._last_resort(request, failed))(scope, receive, send)
                raise
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        return None
