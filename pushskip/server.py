"""Running the app under uvicorn, the same way for the CLI and the tests.

`PushskipServer` closes every WebSocket with 1001 before uvicorn's own
shutdown (which would send 1012), so clients know to move to another process
and resume with `after=`.
"""

from __future__ import annotations

import logging
import re
import socket

import uvicorn
from starlette.applications import Starlette

from pushskip import closing, services
from pushskip.config import Settings

TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path, query and all; the token must not reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and any("token=" in str(arg) for arg in _args(record)):
            record.msg = TOKEN_IN_URL.sub(r"\1[redacted]", record.getMessage())
            record.args = None
        elif "token=" in str(record.msg):
            record.msg = TOKEN_IN_URL.sub(r"\1[redacted]", str(record.msg))
        return True


def _args(record: logging.LogRecord) -> tuple[object, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return tuple(args.values()) if isinstance(args, dict) else (args,)


def install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def server_config(app: Starlette, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    install_log_redaction()
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
        found = services.of_app(app) if isinstance(app, Starlette) else None
        if found is not None:
            await found.hub.close_all(closing.SHUTDOWN)
        await super().shutdown(sockets)
