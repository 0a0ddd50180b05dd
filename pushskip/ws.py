"""The WebSocket endpoint: hello, replay from the log, then live events.

Order matters for "no gap, no duplicate": the socket subscribes first (the
hub returns once Redis confirms the SUBSCRIBE), then reads the state and the
log, then drains the live events that queued meanwhile. The writer keeps the
last seq it sent: it drops anything at or below it, and an event that skips
ahead makes it read the missing ones from the log first. The same rule
serves replay, the seam, and the hub's RESYNC after a Redis fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlsplit

from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from pushskip import events
from pushskip.auth import InvalidToken
from pushskip.hub import PONG, RESYNC, HubUnavailable, Subscriber

logger = logging.getLogger("pushskip.ws")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_TOKEN = 4401
CLOSE_BAD_ORIGIN = 4403
CLOSE_TIMEOUT_S = 2.0
MAX_CLIENT_MESSAGE = 1024


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the app's own host, or one listed in the settings."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def parse_after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 16:
        raise ValueError("after must be a whole number >= 0")
    return int(raw)


class Connection:
    """One accepted socket: sends events in seq order, each at most once."""

    def __init__(self, websocket: WebSocket, sub: Subscriber, last_sent: int) -> None:
        self.websocket = websocket
        self.sub = sub
        self.last_sent = last_sent
        state = websocket.app.state
        self.redis = state.redis
        self.metrics = state.metrics
        self.loop = asyncio.get_running_loop()
        self.peer_gone = False

    def on_reader_done(self, _: object) -> None:
        self.peer_gone = True
        self.sub.wake()

    async def send(self, text: str) -> None:
        # The hub reads sending_since to tell a stuck reader from a busy one.
        self.sub.sending_since = self.loop.time()
        try:
            await self.websocket.send_text(text)
        finally:
            self.sub.sending_since = None

    async def send_from_log(self) -> None:
        """Send every logged event after the last one sent."""
        while True:
            found, _ = await events.read_raw_after(self.redis, self.sub.user_id, self.last_sent)
            for event in found:
                if event.seq > self.last_sent:
                    await self.send(event.text)
                    self.last_sent = event.seq
                    self.metrics.replayed.inc()
            if len(found) < events.READ_LIMIT:
                return

    async def write(self) -> None:
        sub = self.sub
        while sub.close_code is None and not self.peer_gone:
            item = await sub.next()
            if item == PONG:
                await self.send('{"type":"pong"}')
            elif item == RESYNC:
                await self.send_from_log()
            elif isinstance(item, events.RawEvent) and item.seq > self.last_sent:
                if item.seq > self.last_sent + 1:
                    await self.send_from_log()
                if item.seq > self.last_sent:
                    await self.send(item.text)
                    self.last_sent = item.seq
                    self.metrics.delivered.inc()

    async def read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if not text or len(text) > MAX_CLIENT_MESSAGE:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "ping":
                self.sub.offer(PONG)


async def websocket_endpoint(websocket: WebSocket) -> None:
    state = websocket.app.state
    await websocket.accept()
    if not origin_allowed(
        websocket.headers.get("origin"),
        websocket.headers.get("host"),
        state.settings.allowed_origins,
    ):
        await websocket.close(CLOSE_BAD_ORIGIN, "Origin not allowed")
        return
    try:
        user_id = state.signer.verify(websocket.query_params.get("token"))
    except InvalidToken as exc:
        await websocket.close(CLOSE_BAD_TOKEN, str(exc))
        return
    try:
        after = parse_after(websocket.query_params.get("after"))
    except ValueError as exc:
        await websocket.close(CLOSE_POLICY, str(exc))
        return
    try:
        async with state.hub.subscribe(user_id) as sub:
            await serve(websocket, sub, after)
    except HubUnavailable as exc:
        if state.hub.closing:
            await close_quietly(websocket, CLOSE_GOING_AWAY, "Server shutting down")
        else:
            await close_quietly(websocket, CLOSE_TRY_AGAIN, f"Live events unavailable: {exc}")
    except RedisError:
        await close_quietly(websocket, CLOSE_TRY_AGAIN, "Redis is unreachable")


async def serve(websocket: WebSocket, sub: Subscriber, after: int | None) -> None:
    """Run one socket until the client leaves or the hub asks it to close.

    The writer runs in this task; one reader task answers pings and notices the
    client leaving. A writer stuck on a slow reader needs no cancelling: the
    close frame could not pass before its send anyway, and the heartbeat
    drops a client that never reads again.
    """
    state = websocket.app.state
    status = await state.store.status(sub.user_id)
    last_seq = status["lastSeq"]
    # A client ahead of the log (it outlived a Redis that lost its data)
    # resumes from what the log has.
    start = last_seq if after is None or after > last_seq else after
    await websocket.send_json(
        {
            "type": "hello",
            "userId": sub.user_id,
            "state": status["state"],
            "match": status["match"],
            "lastSeq": last_seq,
            "pollIntervalMs": state.settings.poll_interval_ms,
        }
    )
    conn = Connection(websocket, sub, start)
    reader = asyncio.create_task(conn.read())
    reader.add_done_callback(conn.on_reader_done)
    state.metrics.sockets.inc()
    try:
        await conn.send_from_log()
        await conn.write()
    except RedisError:
        sub.close(CLOSE_TRY_AGAIN)
    except WebSocketDisconnect:
        pass
    finally:
        state.metrics.sockets.dec()
        reader.remove_done_callback(conn.on_reader_done)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
    if sub.close_code is not None and not conn.peer_gone:
        if sub.close_code == CLOSE_TRY_AGAIN:
            state.metrics.slow_closes.inc()
            reason = "Too slow a reader; poll events?after= and reconnect"
        else:
            reason = "Server shutting down; reconnect with after="
        # The close frame queues behind what the reader has not read yet: give
        # it as long as a heartbeat would, then let the connection drop.
        settings = state.settings
        timeout = settings.ws_ping_interval_s + settings.ws_ping_timeout_s
        await close_quietly(websocket, sub.close_code, reason, timeout)


async def close_quietly(
    websocket: WebSocket, code: int, reason: str, timeout: float = CLOSE_TIMEOUT_S
) -> None:
    """Close, bounded in time: a reader that stopped reading cannot hold us here."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason), timeout)
