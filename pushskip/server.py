"""Running the app under uvicorn, the same way for the CLI and the tests.

`PushskipServer` closes every WebSocket with 1001 before uvicorn's own
shutdown (which would send 1012), so clients know to move to another process
and resume with `after=`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from pushskip import closing, services
from pushskip.churn import ChurnTurns, is_close_frame
from pushskip.config import Settings
from pushskip.heap import HEAP
from pushskip.slimsync import SlimEvent, SlimQueue

logger = logging.getLogger("pushskip.server")
# uvicorn's lines about each WebSocket ("[accepted]", "connection open", "connection
# closed"): three per socket at INFO, which at thousands of sockets are most of a log
# and a tenth of what opening a socket costs. The CLI shows them at DEBUG only.
CONNECTIONS_LOG = logging.getLogger("pushskip.connections")

WS_MAX_MESSAGE_BYTES = 4096
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
    chosen = logging.getLogger().getEffectiveLevel()
    # DEBUG, or uvicorn's TRACE below it, shows them; anything above shows warnings only.
    CONNECTIONS_LOG.setLevel(chosen if chosen <= logging.DEBUG else logging.WARNING)


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
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn", CONNECTIONS_LOG.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, dropping a request whose headers take too long to arrive
    (a slowloris holds no connection for longer than `header_timeout_s`). A connection's
    first read is churn (churn.py): it waits its turn behind the open connections."""

    header_timeout_s = 10.0
    churn: ChurnTurns | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _first_read = True

    def data_received(self, data: bytes) -> None:
        if self._first_read:
            self._first_read = False
            if self.churn is not None:
                timer = self._header_timer
                left = self.header_timeout_s if timer is None else timer.when() - self.loop.time()
                if not self.churn.run(
                    self.transport, lambda data: self._first_step(data, left), data
                ):
                    # The wait for its turn is the server's, not the client's: the header
                    # timer stops meanwhile, and goes on with what was left of it.
                    self._disarm()
                return
        super().data_received(data)

    def _first_step(self, data: bytes, timeout_left_s: float) -> None:
        self._arm(max(0.0, timeout_left_s))  # a step run at once finds the timer still armed
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle is not before  # the same: an upgrade, handed over
            and not cycle.waiting_for_100_continue
            and cycle.scope["method"] != "HEAD"
        ):
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, timeout_s: float | None = None) -> None:
        if self._header_timer is None:
            delay = self.header_timeout_s if timeout_s is None else timeout_s
            self._header_timer = self.loop.call_later(delay, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        logger.debug("request headers not complete in %.1fs; closing", self.header_timeout_s)
        self.transport.close()


class HeadWithBody:
    """The transport one response is written to: its status line and headers wait for the
    first write of its body and go out with it, in one send.

    uvicorn writes the head when the app starts the response and the body when the
    app sends it, a moment later in the same step: two sends, two packets, and
    for the client two reads of a JSON answer. Only the head waits, and at most
    until the end of the loop's turn (a streamed body whose first chunk is slow
    gets its head then), or a close; the rest of the body goes out as it comes.
    The first write must be the head: not for a request that expects a 100
    Continue (written before the head) or a HEAD (no body follows), which keep
    uvicorn's own transport. It holds nothing but the transport, so a request's
    objects are still freed by reference counting (heap.py freezes survivors).
    """

    __slots__ = ("_held", "_passing", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._passing = False

    def write(self, data: bytes) -> None:
        if self._passing:
            self._transport.write(data)
        elif self._held is None:
            self._held = bytes(data)
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._held += data
            self.flush()

    def flush(self) -> None:
        self._passing = True
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Once the server has sent its close frame, the peer has this long to finish the closing
# handshake, and may send this much meanwhile; past either, the connection is dropped.
CLOSE_GRACE_S = 2.0
AFTER_CLOSE_BYTES = 16 * 1024
# What the protocol parses at once: a client message's size limit.
PARSE_SLICE_BYTES = 4096


class ClosingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, spending nothing on a socket the server is closing.

    uvicorn keeps reading, and parsing, whatever the peer sends for up to 10 s
    after the server's close frame (waiting for the peer's), and a close whose
    frame cannot be written (a peer that never reads) waits for as long as the
    app lets it. A flooder that never reads thus kept a core busy for the 10 s.
    Here, once the server closes (its own close, a frame over the size limit, a
    missed heartbeat):

    - the peer has CLOSE_GRACE_S to complete the closing handshake, and may send
      AFTER_CLOSE_BYTES meanwhile (a close reply is a few bytes); past either
      the connection is aborted, unflushed, and nothing more is read;
    - a close frame that cannot even be written within CLOSE_GRACE_S (the
      peer's window is full) is given up, and the connection aborted.

    A close frame from the peer is churn (churn.py): it waits its turn behind
    the other sockets' traffic.

    And what the peer sends is parsed only as fast as the app takes its
    messages: uvicorn parses every frame of what one read brings (a read of a
    flood is ~15,000 tiny frames, all queued for the app) and only then pauses
    reading. Here a read is parsed PARSE_SLICE_BYTES at a time, the next slice
    once the app has taken the messages of the last, so a socket the app closes
    for its message rate costs the parsing of its burst, not of its flood.
    """

    churn: ChurnTurns | None = None
    _after_close = 0
    _drop_timer: asyncio.TimerHandle | None = None
    _unparsed = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Errors still show; the per-socket lines (uvicorn's, and the websockets
        # protocol's "connection open/closed") at DEBUG only.
        self.logger = self.conn.logger = CONNECTIONS_LOG
        # What every open socket holds, made smaller (slimsync.py).
        self.queue = SlimQueue()  # type: ignore[assignment]
        self.writable = SlimEvent()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        # A read that continues a frame split across reads can look like a close frame
        # too (its first byte is the frame's payload); it then waits a turn like one,
        # and is parsed in order all the same.
        if (
            self.churn is not None
            and not self.close_sent
            and not self._unparsed
            and self.handshake_complete
            and is_close_frame(data)
        ):
            self.churn.run(self.transport, self._received, data)
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        # Also the step of a close frame that waited its turn: the server may have sent
        # its own close meanwhile, and the peer's then completes the closing handshake.
        if self.close_sent:
            self._after_close += len(data) + len(self._unparsed)
            self._unparsed = b""
            if self._after_close > AFTER_CLOSE_BYTES:
                self._drop()
                return
            super().data_received(data)
            self._arm_drop()
            return
        self._unparsed += data
        self._parse()

    def _parse(self) -> None:
        """Parse what was read, a slice at a time, while the app keeps up (or the handshake
        is under way); the rest waits for the app's next receive, and nothing more is read
        from the peer while some is left."""
        while self._unparsed and not self.close_sent and not self.disconnected:
            if self.handshake_initiated and self.read_paused:
                break
            piece = self._unparsed[:PARSE_SLICE_BYTES]
            self._unparsed = self._unparsed[PARSE_SLICE_BYTES:]
            super().data_received(piece)
        if self.close_sent:
            self._arm_drop()
        elif self._unparsed and not self.transport.is_closing():
            self.transport.pause_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await super().receive()  # resumes reading once the app has taken every message
        if self._unparsed and self.queue.empty():
            self.read_paused = False
            self._parse()
        return message

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.close" and not self.writable.is_set():
            # The peer reads nothing: its window is full and the close frame cannot go out.
            try:
                await asyncio.wait_for(self.writable.wait(), CLOSE_GRACE_S)
            except TimeoutError:
                self._drop()
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (their headers: ~3 KiB) are not read
            # again once the accept is out; the app has what it needs in its scope. The
            # request's headers are emptied too: the websockets parser keeps the request.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]
        if self.close_sent:
            self._arm_drop()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._arm_drop()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        super().connection_lost(exc)

    def _arm_drop(self) -> None:
        if self._drop_timer is None and not self.disconnected:
            self._drop_timer = self.loop.call_later(CLOSE_GRACE_S, self._drop)

    def _drop(self) -> None:
        self._drop_timer = None
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.close_sent = True
        if not self.disconnected:
            self.transport.abort()


def protocols(
    header_timeout_s: float, churn: ChurnTurns | None
) -> tuple[type[HeaderTimeoutProtocol], type[ClosingWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes of one server, sharing its `churn` turns."""
    http = type(
        "PushskipHttpProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout_s": header_timeout_s, "churn": churn},
    )
    ws = type("PushskipWebSocketProtocol", (ClosingWebSocketProtocol,), {"churn": churn})
    return http, ws


def server_config(
    app: Starlette,
    settings: Settings,
    *,
    host: str,
    port: int,
    churn: ChurnTurns | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration for `app`; its connections' churn runs in `churn`'s turns
    (by default, its own)."""
    install_log_redaction()
    trusted = settings.trusted_proxies
    http, ws = protocols(settings.header_timeout_s, churn if churn is not None else ChurnTurns())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        # X-Forwarded-For names the client only when a trusted proxy sent it.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=list(trusted) if trusted else [],
        ws=ws,
        # A client message over 4 KiB closes the socket (1009) before we read it.
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        # Events are tiny; per-message deflate would cost ~50 KiB per socket.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_config=None,
        access_log=False,
    )


class PushskipServer(uvicorn.Server):
    """uvicorn's server, closing every socket with a reason on shutdown. With
    `settle_heap`, the process's heap is settled (see heap.py) once start-up is done:
    for a process that only serves, not for tests that start many apps in one process."""

    def __init__(self, config: uvicorn.Config, *, settle_heap: bool = False) -> None:
        super().__init__(config)
        self.settle_heap = settle_heap

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.settle_heap and self.started:
            HEAP.settle()
            HEAP.start_sweeps()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        found = services.of_app(app) if isinstance(app, Starlette) else None
        if found is not None:
            await found.hub.close_all(closing.SHUTDOWN)
        if self.settle_heap:
            HEAP.stop_sweeps()
        await super().shutdown(sockets)
