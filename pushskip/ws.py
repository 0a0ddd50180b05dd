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

from pushskip import closing, events
from pushskip.auth import InvalidToken
from pushskip.closing import CloseReason
from pushskip.hub import PONG, RESYNC, HubUnavailable, Subscriber
from pushskip.metrics import Metrics
from pushskip.services import Services, services

logger = logging.getLogger("pushskip.ws")

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


class Connection:
    """One accepted socket: sends events in seq order, each at most once."""

    def __init__(
        self, websocket: WebSocket, found: Services, sub: Subscriber, last_sent: int
    ) -> None:
        self.websocket = websocket
        self.sub = sub
        self.last_sent = last_sent
        self.redis = found.redis
        self.metrics = found.metrics
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
        while sub.close_reason is None and not self.peer_gone:
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
    found = services(websocket)
    await websocket.accept()
    if not origin_allowed(
        websocket.headers.get("origin"),
        websocket.headers.get("host"),
        found.settings.allowed_origins,
    ):
        await close_quietly(websocket, closing.BAD_ORIGIN, found.metrics)
        return
    try:
        user_id = found.signer.verify(websocket.query_params.get("token"))
    except InvalidToken as exc:
        await close_quietly(websocket, closing.BAD_TOKEN.because(str(exc)), found.metrics)
        return
    try:
        after = events.parse_seq(websocket.query_params.get("after"))
    except ValueError as exc:
        await close_quietly(websocket, closing.BAD_REQUEST.because(str(exc)), found.metrics)
        return
    try:
        async with found.hub.subscribe(user_id) as sub:
            await serve(websocket, found, sub, after)
    except HubUnavailable as exc:
        if found.hub.closing:
            await close_quietly(websocket, closing.SHUTDOWN, found.metrics)
        else:
            reason = closing.LIVE_UNAVAILABLE
            logger.warning("socket of %s closed: %s (%s)", user_id, reason.text, exc)
            await close_quietly(websocket, reason, found.metrics)


async def serve(
    websocket: WebSocket, found: Services, sub: Subscriber, after: int | None
) -> None:
    """Run one socket until the client leaves or the hub asks it to close.

    The writer runs in this task; one reader task answers pings and notices the
    client leaving. A writer stuck on a slow reader needs no cancelling: the
    close frame could not pass before its send anyway, and the heartbeat
    drops a client that never reads again.
    """
    try:
        status = await found.store.status(sub.user_id)
    except RedisError:
        await close_quietly(websocket, closing.REDIS_UNAVAILABLE, found.metrics)
        return
    # A client ahead of the log (it outlived a Redis that lost its data)
    # resumes from what the log has.
    start = status.last_seq if after is None or after > status.last_seq else after
    await websocket.send_json(
        {
            "type": "hello",
            "userId": sub.user_id,
            "state": status.state,
            "match": status.match,
            "lastSeq": status.last_seq,
            "pollIntervalMs": found.settings.poll_interval_ms,
        }
    )
    conn = Connection(websocket, found, sub, start)
    reader = asyncio.create_task(conn.read())
    reader.add_done_callback(conn.on_reader_done)
    found.metrics.sockets.inc()
    try:
        await conn.send_from_log()
        await conn.write()
    except RedisError:
        sub.close(closing.REDIS_UNAVAILABLE)
    except WebSocketDisconnect:
        pass
    finally:
        found.metrics.sockets.dec()
        reader.remove_done_callback(conn.on_reader_done)
        await stop_reader(reader)
    if sub.close_reason is not None and not conn.peer_gone:
        # The close frame queues behind what the reader has not read yet: give
        # it as long as a heartbeat would, then let the connection drop.
        settings = found.settings
        timeout = settings.ws_ping_interval_s + settings.ws_ping_timeout_s
        await close_quietly(websocket, sub.close_reason, found.metrics, timeout)


async def stop_reader(reader: asyncio.Task[None]) -> None:
    """Cancel the reader and wait for it; our own cancellation still goes through."""
    reader.cancel()
    try:
        await reader
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as exc:  # the peer's socket failed under it: nothing left to read
        logger.debug("socket reader ended with %r", exc)


async def close_quietly(
    websocket: WebSocket,
    reason: CloseReason,
    metrics: Metrics,
    timeout: float = CLOSE_TIMEOUT_S,
) -> None:
    """Close for `reason` and count it, bounded in time: a reader that stopped
    reading cannot hold us here."""
    metrics.count_close(reason)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(reason.code, reason.text), timeout)
