"""Running the app under uvicorn, the same way for the CLI and the tests.

`PushskipServer` closes every WebSocket with 1001 before uvicorn's own
shutdown (which would send 1012), so clients know to move to another process
and resume with `after=`.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from pushskip import closing, services
from pushskip.config import Settings

TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"']+")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Several processes writing to one stream: each line names its process.
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# uvicorn waits this long for requests and sockets to finish when it shuts down.
GRACEFUL_SHUTDOWN_S = 10


def configure_logging(level: int | str, *, workers: bool = False) -> None:
    """The root logger's level and format (`workers`: with each line's process id)."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format=WORKERS_LOG_FORMAT if workers else LOG_FORMAT,
        force=workers,
    )


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def exit_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT raise SystemExit(0).

    uvicorn handles them while it serves and re-raises them when done; these
    handlers turn that (and a signal during start-up) into a normal exit, so
    the callers' `finally` blocks run (the CLI stops the private Redis last).
    """
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)


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
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
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
