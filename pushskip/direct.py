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
goes through Starlette as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


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
            and inspect.isfunction(route.endpoint)
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
        # Handlers keyed by status code are Starlette's to look up: with any, none is direct.
        by_class = all(isinstance(k, type) for k in handlers)
        self.endpoints = plain_routes(routes) if by_class else {}
        self._handlers = dict(handlers)
        self._last_resort = self._handlers.pop(Exception, None)

    def find(self, scope: Scope) -> Endpoint | None:
        return self.endpoints.get((scope["method"], scope["path"]))

    async def serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is not None:
                response = await handler(request, exc)
            elif self._last_resort is not None:
                await (await self._last_resort(request, exc))(scope, receive, send)
                raise
            else:
                raise
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        return None
