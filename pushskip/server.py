"""Running the app under uvicorn, the same way for the CLI and the tests.

`PushskipServer` closes every WebSocket with 1001 before uvicorn's own
shutdown (which would send 1012), so clients know to move to another process
and resume with `after=`.
"""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

from pushskip.config import Settings
from pushskip.ws import CLOSE_GOING_AWAY


def server_config(app: Starlette, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        # Events are tiny; per-message deflate would cost ~50 KiB per socket.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=False,
    )


class PushskipServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        hub = getattr(getattr(app, "state", None), "hub", None)
        if hub is not None:
            await hub.close_all(CLOSE_GOING_AWAY)
        await super().shutdown(sockets)
