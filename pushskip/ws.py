"""The WebSocket endpoint: hello, replay from the log, then live events.

Order matters for "no gap, no duplicate": the socket subscribes first (the
hub returns once Redis confirms the SUBSCRIBE), then reads the state (with the
log's last seq), then the log if the client is behind it, then drains the live
events that queued meanwhile. The writer keeps the
epoch and the last seq it sent: it drops anything at or below that seq, and
an event that skips ahead, or belongs to a new epoch, makes it read the log
first. The same rule serves replay, the seam, the hub's RESYNC after a Redis
fault, and a log that Redis lost (a `hello` with `"reset": true`).

Redis being away closes no socket: the writer waits and reads the log again
when Redis answers, so every missed event still arrives, in order, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.websockets import WebSocket, WebSocketDisconnect

from pushskip import api, closing, events
from pushskip.auth import InvalidToken
from pushskip.closing import CloseReason
from pushskip.hub import PONG, RESYNC, HubUnavailable, Reply, Subscriber, TooManySockets
from pushskip.media import media_event_text, with_media
from pushskip.metrics import Metrics
from pushskip.services import OPENING_WAIT_S, Services, services
from pushskip.store import UserStatus
from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.ws")

CLOSE_TIMEOUT_S = 2.0
MAX_CLIENT_MESSAGE = 1024
MAX_ACTION_ID = 64
PONG_TEXT = '{"type":"pong"}'
# While Redis is away, a socket that is behind retries its log read this often
# (doubling), and at once when the pub/sub link is back (RESYNC).
RETRY_START_S = 0.1
RETRY_MAX_S = 2.0


def scope_header(scope: Any, name: bytes) -> str | None:
    """A request header as `websocket.headers.get` gives it (`name` lower-case), without the
    `Headers` object Starlette would keep for the socket's whole life."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def scope_query(scope: Any) -> dict[str, str]:
    """The query string as `websocket.query_params` reads it (the last of a repeated name),
    in a dict the caller drops once read, instead of one kept for the socket's life."""
    return dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the app's own host, or one listed in the settings."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; one per message."""

    __slots__ = ("burst", "rate", "since", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens = rate, burst, burst
        self.since: float | None = None

    def take(self, now: float) -> bool:
        if self.since is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.since) * self.rate)
        self.since = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


async def hello(found: Services, status: UserStatus, user_id: str, *, reset: bool) -> str:
    message: dict[str, Any] = {
        "type": "hello",
        "userId": user_id,
        "state": status.state,
        "match": await with_media(status.match, user_id, found.media),
        "lastSeq": status.last_seq,
        "epoch": status.epoch,
        "pollIntervalMs": found.settings.poll_interval_ms,
    }
    if reset:
        message["reset"] = True
    return json.dumps(message)


class Connection:
    """One accepted socket: sends events in seq order, each at most once, per epoch.

    `epoch` is the log epoch the client was last told of (None: it has no
    log). An event of another epoch means the log started anew: the client
    gets a `hello` with `"reset": true` and the new log from its start, unless
    it had no log yet, in which case it simply starts counting in the new one.
    While Redis is away the socket stays open and waits (`behind`): every
    event it misses is in the log, read when Redis answers again.
    """

    # One per open socket: no instance dict.
    __slots__ = (
        "epoch",
        "found",
        "last_sent",
        "logged",
        "loop",
        "metrics",
        "peer_gone",
        "sub",
        "websocket",
    )

    def __init__(
        self, websocket: WebSocket, found: Services, sub: Subscriber, status: UserStatus
    ) -> None:
        self.websocket = websocket
        self.found = found
        self.sub = sub
        self.epoch = status.epoch
        self.last_sent = status.last_seq
        # The log's last seq when the socket opened (after it subscribed): what the
        # first catch-up has to read up to. Later events come from the subscription.
        self.logged = status.last_seq
        self.metrics = found.metrics
        self.loop = asyncio.get_running_loop()
        self.peer_gone = False

    def on_reader_done(self, _: object) -> None:
        # The reader stops on its own only when the client left, or when it
        # asked the writer to close the socket (over its message rate).
        if self.sub.close_reason is None:
            self.peer_gone = True
        self.sub.wake()

    async def send(self, text: str) -> None:
        # The hub reads sending_since to tell a stuck reader from a busy one.
        self.sub.sending_since = self.loop.time()
        try:
            await self.websocket.send_text(text)
        finally:
            self.sub.sending_since = None

    async def send_event(self, text: str) -> None:
        """An event's JSON text, as this user is given it (with their media grant)."""
        media = self.found.media
        if media is not None:
            text = await media_event_text(text, self.sub.user_id, media)
        await self.send(text)

    def same_log(self, epoch: str | None) -> bool:
        """Whether `epoch` continues what the client has (adopting it if the client had none)."""
        if epoch == self.epoch:
            return True
        if self.epoch is None and self.last_sent == 0:
            self.epoch = epoch
            return True
        return False

    async def send_reset(self) -> None:
        """Tell the client its log is gone: a new hello, and count again from seq 0."""
        status = await self.found.store.status(self.sub.user_id)
        self.epoch = status.epoch
        self.last_sent = 0
        await self.send(await hello(self.found, status, self.sub.user_id, reset=True))
        self.metrics.resets.inc()

    async def send_from_log(self) -> None:
        """Send every logged event after the last one sent (after a reset, if the log is new)."""
        while True:
            log = await events.read_log(self.found.redis, self.sub.user_id, self.last_sent)
            # Below what was sent in the same epoch: Redis rolled the log back (a
            # failover to a replica that missed the last appends). It is lost too.
            if not self.same_log(log.epoch) or log.last_seq < self.last_sent:
                await self.send_reset()
                continue
            for event in log.events:
                if event.seq > self.last_sent:
                    await self.send_event(event.text)
                    self.last_sent = event.seq
                    self.metrics.replayed.inc()
            if len(log.events) < events.READ_LIMIT:
                return

    async def write(self) -> None:
        sub = self.sub
        # The replay after hello is the first catch-up; a client that is not behind the
        # log (most: a fresh socket, or one resuming from the last seq) skips that read.
        behind = self.last_sent < self.logged
        retry_in = RETRY_START_S
        while sub.close_reason is None and not self.peer_gone:
            if behind:
                try:
                    await self.send_from_log()
                    behind, retry_in = False, RETRY_START_S
                except RedisError as exc:
                    # Away, restarting, loading, read-only during a failover: wait.
                    logger.info("log of %s unreadable: %r; retrying", sub.user_id, exc)
                    # A RESYNC (the link is back) or the timer, whichever first. Events
                    # meanwhile are in the log; pongs and replies are not, so send them.
                    item = await sub.next(timeout=retry_in)
                    if isinstance(item, Reply):
                        await self.send(item)
                    elif item == PONG:
                        await self.send(PONG_TEXT)
                    retry_in = min(retry_in * 2, RETRY_MAX_S)
                continue
            item = await sub.next()
            if isinstance(item, Reply):
                await self.send(item)
            elif item == PONG:
                await self.send(PONG_TEXT)
            elif item == RESYNC:
                behind = True
            elif isinstance(item, events.RawEvent) and (
                not self.same_log(item.epoch) or item.seq > self.last_sent + 1
            ):
                behind = True  # a new log, or a gap: both are read from the log
            elif isinstance(item, events.RawEvent) and item.seq > self.last_sent:
                await self.send_event(item.text)
                self.last_sent = item.seq
                self.metrics.delivered.inc()

    async def read(self) -> None:
        """Answer pings; stop when the client leaves or sends faster than it may.

        Messages over 4 KiB never get here: the protocol closes the socket (1009)."""
        settings = self.found.settings
        bucket = TokenBucket(settings.ws_msg_rate, 2 * settings.ws_msg_rate)
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if not bucket.take(self.loop.time()):
                self.sub.close(closing.RATE_LIMITED)
                return
            text = message.get("text")
            if not text or len(text) > MAX_CLIENT_MESSAGE:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind == "ping":
                self.sub.offer(PONG)
            elif isinstance(kind, str) and kind in api.SOCKET_ACTIONS:
                self.sub.reply(await self.act(kind, data))

    async def act(self, kind: str, message: dict[str, Any]) -> str:
        """Run an action sent over the socket; the reply's JSON (API.md, Actions over the
        socket): the status and body the HTTP route would give, a 400 for a bad action."""
        request_id = message.get("id")
        body = {k: v for k, v in message.items() if k not in ("type", "id")}
        try:
            if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ACTION_ID:
                request_id = None
                raise api.ApiError(400, f"id must be a string of 1 to {MAX_ACTION_ID} characters")
            if not api.valid_unicode(body):
                raise api.ApiError(400, "The action holds a string that is not valid Unicode")
            caller = api.Caller(
                self.found, self.sub.user_id, api.client_address(self.websocket), {}
            )
            api.check_rate(caller)
            status, payload = 200, {"success": True, **await api.perform(
                caller, api.SOCKET_ACTIONS[kind], body
            )}
        except api.ApiError as exc:
            status, payload = exc.status, {"success": False, "error": exc.message}
        except (RedisConnectionError, RedisTimeoutError):
            status, payload = 503, {"success": False, "error": api.REDIS_DOWN}
        except Exception:
            logger.exception("socket action %s of %s failed", kind, self.sub.user_id)
            status, payload = 500, {"success": False, "error": "Internal server error"}
        return json.dumps({"type": "reply", "id": request_id, "status": status, "body": payload})


class OpeningTurn:
    """A socket's turn to open (Services.opening: so many at once), given back once.
    One that waits `wait_s` in vain opens without a turn."""

    __slots__ = ("_gate", "_held", "wait_s")

    def __init__(self, gate: asyncio.Semaphore, wait_s: float = OPENING_WAIT_S) -> None:
        self._gate = gate
        self._held = False
        self.wait_s = wait_s

    async def take(self) -> None:
        if not self._gate.locked():
            # A free turn is taken without suspending: no wait_for, whose task (on 3.11)
            # would cost the open more than the rest of this gate.
            await self._gate.acquire()
            self._held = True
            return
        try:
            await asyncio.wait_for(self._gate.acquire(), self.wait_s)
        except TimeoutError:
            return
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._gate.release()


async def websocket_endpoint(websocket: WebSocket) -> None:
    found = services(websocket)
    await websocket.accept()
    # Read from the ASGI scope: an idle socket keeps no parsed copy of its headers and query.
    scope = websocket.scope
    if not origin_allowed(
        scope_header(scope, b"origin"),
        scope_header(scope, b"host"),
        found.settings.allowed_origins,
    ):
        await close_quietly(websocket, closing.BAD_ORIGIN, found.metrics)
        return
    query = scope_query(scope)
    try:
        user_id = await found.identity.verify(query.get("token"))
    except InvalidToken as exc:
        await close_quietly(websocket, closing.BAD_TOKEN.because(str(exc)), found.metrics)
        return
    try:
        after = events.parse_seq(query.get("after"))
        epoch = events.parse_epoch(query.get("epoch"))
    except ValueError as exc:
        await close_quietly(websocket, closing.BAD_REQUEST.because(str(exc)), found.metrics)
        return
    del query
    turn = OpeningTurn(found.opening)
    try:
        found.hub.admit(user_id)  # refused at once, without waiting for a turn
        await turn.take()
        async with found.hub.subscribe(user_id) as sub:
            found.presence.socket_opened(user_id)
            try:
                await serve(websocket, found, sub, after, epoch, turn)
            finally:
                found.presence.socket_closed(user_id)
    except TooManySockets:
        turn.give_back()
        await close_quietly(websocket, closing.TOO_MANY_SOCKETS, found.metrics)
    except HubUnavailable as exc:
        turn.give_back()
        if found.hub.closing:
            await close_quietly(websocket, closing.SHUTDOWN, found.metrics)
        else:
            reason = closing.LIVE_UNAVAILABLE
            logger.warning("socket of %s closed: %s (%s)", user_id, reason.text, exc)
            await close_quietly(websocket, reason, found.metrics)
    finally:
        turn.give_back()  # when anything else ended the socket before its hello


async def serve(
    websocket: WebSocket,
    found: Services,
    sub: Subscriber,
    after: int | None,
    epoch: str | None,
    turn: OpeningTurn,
) -> None:
    """Run one socket until the client leaves or the hub asks it to close. Its opening
    `turn` is given back once the hello is sent, or the socket refused.

    The writer runs in this task; one reader task answers pings and notices the
    client leaving. A writer stuck on a slow reader needs no cancelling: the
    close frame could not pass before its send anyway, and the heartbeat
    drops a client that never reads again.
    """
    try:
        status = await found.store.status(sub.user_id)
    except RedisError:
        turn.give_back()
        await close_quietly(websocket, closing.REDIS_UNAVAILABLE, found.metrics)
        return
    if status.banned:
        turn.give_back()
        await close_quietly(websocket, closing.BANNED, found.metrics)
        return
    # A client of another epoch, or one ahead of the log (Redis rolled it back,
    # or an old client without epochs outlived a lost log), gets the whole log.
    reset = (epoch is not None and epoch != status.epoch) or (
        after is not None and after > status.last_seq
    )
    conn = Connection(websocket, found, sub, status)
    if reset:
        conn.last_sent = 0
        found.metrics.resets.inc()
    elif after is not None:
        conn.last_sent = after
    try:
        await conn.send(await hello(found, status, sub.user_id, reset=reset))
    except WebSocketDisconnect:
        return  # the client left before its hello: nothing to log
    finally:
        turn.give_back()
    reader = asyncio.create_task(conn.read())
    reader.add_done_callback(conn.on_reader_done)
    found.metrics.sockets.inc()
    try:
        await conn.write()
    except WebSocketDisconnect:
        pass
    except Exception:
        logger.exception("socket of %s failed", sub.user_id)
        sub.close(closing.SERVER_ERROR)
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
    try:
        await cancel_and_wait([reader])
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
