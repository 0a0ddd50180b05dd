"""HTTP routes: parse, validate, call the store, shape the response.

Every failure a client can cause is an `ApiError` with API.md's status code,
raised before anything touches Redis, and rendered by `app.py` as
`{"success": false, "error": ...}`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from pushskip import events
from pushskip.auth import InvalidToken, bearer_token, new_user_id
from pushskip.events import MAX_SEQ as MAX_SEQ  # the limit parse_after enforces
from pushskip.media import InvalidMediaWebhook, media_event, with_media
from pushskip.services import Services, services

Handler = Callable[[Request], Awaitable[JSONResponse]]
MAX_ROOM_NAME = 128


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ok(payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"success": True, **payload})


async def read_raw_body(request: Request) -> bytes:
    """The body's bytes; 413 past the size cap, unread beyond it."""
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"Request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"Request body is larger than {limit} bytes")
    return bytes(body)


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON object in the body ({} when empty); 413 past the size cap, unread."""
    body = await read_raw_body(request)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object")
    if not valid_unicode(data):
        raise ApiError(400, "Request body holds a string that is not valid Unicode")
    return data


def valid_unicode(value: object) -> bool:
    """No lone surrogate (JSON lets "\\ud800" through; Redis and UTF-8 do not)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


async def authenticate(request: Request, body_token: object = None) -> str:
    """The token's user: from `Authorization: Bearer`, else (beacons) `body_token`."""
    header = request.headers.get("authorization")
    token = bearer_token(header) if header is not None else body_token
    if token is None:
        raise ApiError(401, "Missing bearer token")
    if not isinstance(token, str):
        raise ApiError(400, "token must be a string")
    try:
        return await services(request).identity.verify(token)
    except InvalidToken as exc:
        raise ApiError(401, str(exc).capitalize()) from None


def check_claimed_user(me: str, claimed: object) -> None:
    """Old clients still send userId; it must be the token's user."""
    if claimed is None:
        return
    if not isinstance(claimed, str):
        raise ApiError(400, "userId must be a string")
    if claimed != me:
        raise ApiError(403, "userId does not match the session token")


def optional_field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(400, f"{name} must be a {'boolean' if kind is bool else kind.__name__}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, from which client address, with which query string: what an action
    needs besides its body, whether it came over HTTP or the socket."""

    found: Services
    me: str
    address: str
    query: Mapping[str, str]
    # A presence touch claimed for this request (Presence.claim_touch) that the action
    # writes in its own Redis step (TOUCH_IN_STEP); 0: none.
    present_ms: int = 0


Action = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


def check_rate(caller: Caller) -> None:
    if not caller.found.user_limiter.allow(caller.me):
        raise ApiError(429, "Too many requests; slow down")


async def perform(caller: Caller, action: Action, body: dict[str, Any]) -> dict[str, Any]:
    """An action's checks and effects, the same over HTTP and over the socket (the rate
    limit is checked before, so a limited request is not even read)."""
    check_claimed_user(caller.me, body.get("userId", caller.query.get("userId")))
    presence = caller.found.presence
    present_ms = presence.claim_touch(caller.me)
    try:
        if present_ms and action in TOUCH_IN_STEP:
            # One round trip fewer: the action's own script pushes the deadline.
            return await action(dataclasses.replace(caller, present_ms=present_ms), body)
        payload = await action(caller, body)
    except BaseException:
        if present_ms:
            presence.forget_touch(caller.me)
        raise
    if present_ms:
        await presence.write_touch(caller.me)
    return payload


def user_route(action: Action, *, reads_body: bool, token_in_body: bool = False) -> Handler:
    """Wraps an action with auth, rate limit, body parsing, the userId check and presence.

    With `token_in_body`, a request without an Authorization header may carry
    its token as the body's `token` field (what `navigator.sendBeacon` can send).
    """

    async def endpoint(request: Request) -> JSONResponse:
        found = services(request)
        beacon = token_in_body and "authorization" not in request.headers
        body = await read_body(request) if beacon else {}
        caller = Caller(
            found, await authenticate(request, body.get("token")), client_address(request),
            request.query_params,
        )
        check_rate(caller)
        if beacon:
            pass  # read above
        elif reads_body:
            body = await read_body(request)
        else:
            # A GET has no use for a body, but the size cap holds for every route.
            await read_raw_body(request)
        return ok(await perform(caller, action, body))

    return endpoint


async def create_session(request: Request) -> JSONResponse:
    found = services(request)
    if not found.settings.anonymous_sessions:
        # Only the app's own users get in (PUSHSKIP_ANONYMOUS_SESSIONS=false).
        raise ApiError(404, "Not Found")
    await read_body(request)  # enforces the size cap; the body carries nothing we need
    if found.session_verifier is not None and not await found.session_verifier(request):
        raise ApiError(403, "Session refused")
    if not await found.store.allow_session(
        client_address(request), found.settings.session_rate_per_min
    ):
        raise ApiError(429, "Too many sessions from this address; slow down")
    signer = found.signer
    user_id = new_user_id()
    return ok({"userId": user_id, "token": signer.sign(user_id), "expiresIn": signer.ttl_s})


def client_address(conn: HTTPConnection) -> str:
    """The peer, or the client a trusted proxy named (uvicorn applies
    PUSHSKIP_TRUSTED_PROXIES to X-Forwarded-For before we see the request)."""
    return conn.client.host if conn.client else "unknown"


async def enqueue(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    reply = await caller.found.store.enqueue(
        caller.me, address=caller.address, present_ms=caller.present_ms
    )
    if reply.status == "limited":
        raise ApiError(429, "Too many users from this address are waiting; try again later")
    if reply.status == "rate-limited":
        raise ApiError(429, "Too many enqueues from this address; slow down")
    if reply.status == "banned":
        raise ApiError(403, "You are banned from matching for now")
    if reply.status == "matched":
        match = await with_media(reply.match, caller.me, caller.found.media)
        return {"status": "matched", "match": match}
    return {"status": "waiting"}


async def leave(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    reply = await caller.found.store.leave(caller.me)
    return {"left": True, "roomName": reply.room}


async def status(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    store = caller.found.store
    result = await store.status(caller.me)
    if result.state == "waiting":
        await store.touch(caller.me)
    return {
        "state": result.state,
        "match": await with_media(result.match, caller.me, caller.found.media),
        "lastSeq": result.last_seq,
        "epoch": result.epoch,
    }


async def skip(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    requeue = optional_field(body, "requeue", bool, True)
    result = await caller.found.store.skip(
        caller.me, requeue=requeue, address=caller.address, present_ms=caller.present_ms
    )
    if not result.skipped:
        return {"skipped": False, "message": "No active match"}
    return {
        "skipped": True,
        "roomName": result.room,
        "status": result.status,
        "match": await with_media(result.match, caller.me, caller.found.media),
    }


async def check_disconnect(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    reason = await caller.found.store.check_disconnect(caller.me)
    if reason is None:
        return {"shouldDisconnect": False}
    return {"shouldDisconnect": True, "reason": reason}


async def check_room_valid(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    room = body.get("roomName")
    if not isinstance(room, str) or not room:
        raise ApiError(400, "roomName is required and must be a non-empty string")
    if len(room) > MAX_ROOM_NAME:
        raise ApiError(400, f"roomName is longer than {MAX_ROOM_NAME} characters")
    reason = await caller.found.store.check_room_valid(caller.me, room)
    return {"valid": reason is None, "reason": reason}


async def left_behind_status(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    note = await caller.found.store.left_behind(caller.me)
    if note is None:
        return {"leftBehind": False, "skippedBy": None, "roomName": None, "timestamp": None}
    return {
        "leftBehind": True,
        "skippedBy": note.skipped_by,
        "roomName": note.room,
        "timestamp": note.timestamp,
    }


def parse_after(raw: str | None) -> int:
    """`after=` of a poll: 0 when absent; 400 unless a whole number up to MAX_SEQ."""
    try:
        return events.parse_seq(raw) or 0
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def parse_epoch(raw: str | None) -> str | None:
    try:
        return events.parse_epoch(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def list_events(caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """The log after `after`; with a stale `epoch`, the whole current log and the state."""
    after = parse_after(caller.query.get("after"))
    epoch = parse_epoch(caller.query.get("epoch"))
    found, me = caller.found, caller.me
    log = await events.read_log(found.redis, me, after)
    await found.store.touch(me)
    if (epoch is None or epoch == log.epoch) and after <= log.last_seq:
        given = [await media_event(e, me, found.media) for e in log.decoded()]
        return {"events": given, "lastSeq": log.last_seq, "epoch": log.epoch}
    # The client's seqs count in a log that is gone (another epoch, or one that
    # Redis rolled back below `after`): start it over from the state, which
    # covers the log up to its lastSeq; the events read after it (same epoch)
    # follow, those up to lastSeq being already in the state.
    status = await found.store.status(me)
    log = await events.read_log(found.redis, me, 0)
    logged = log.decoded() if log.epoch == status.epoch else []
    return {
        "events": [await media_event(e, me, found.media) for e in logged],
        "lastSeq": status.last_seq,
        "epoch": status.epoch,
        "reset": True,
        "state": status.state,
        "match": await with_media(status.match, me, found.media),
    }


async def livekit_webhook(request: Request) -> JSONResponse:
    """LiveKit's webhooks (verified with the API key and secret): a matched user leaving
    their match's room starts the presence grace; joining it again cancels it."""
    found = services(request)
    body = await read_raw_body(request)
    media = found.media
    if media is None:  # the route exists only when LiveKit is configured
        raise ApiError(404, "Not Found")
    try:
        news = media.read_webhook(body, request.headers.get("authorization"))
    except InvalidMediaWebhook as exc:
        raise ApiError(401, f"Webhook not verified: {exc}") from None
    if news is None:
        return ok({"handled": False})
    changed = await found.store.media_presence(news.kind, news.user, news.room)
    return ok({"handled": changed})


def media_routes() -> list[BaseRoute]:
    """The routes under /api for media servers (mounted only when one is configured)."""
    return [Route("/webhooks/livekit", livekit_webhook, methods=["POST"])]


# What a client may do over its socket as well as over HTTP (API.md, Actions over the socket).
SOCKET_ACTIONS: dict[str, Action] = {"enqueue": enqueue, "skip": skip, "leave": leave}
# The actions whose Redis step also writes a presence touch claimed for the request.
TOUCH_IN_STEP: frozenset[Action] = frozenset({enqueue, skip})
REDIS_DOWN = "Redis is unreachable; try again shortly"


def routes(extra: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """Every /api route, and `extra` ones (the server API, when it is on) under /api too."""
    # One Mount for /api: a known path with the wrong method is then 405 (not
    # a 404 from the static files mounted at /), an unknown /api path is 404.
    base = "/simple-matching"
    api = [
        Route("/session", create_session, methods=["POST"]),
        Route(f"{base}/enqueue", user_route(enqueue, reads_body=True), methods=["POST"]),
        Route(
            f"{base}/leave",
            user_route(leave, reads_body=True, token_in_body=True),
            methods=["POST"],
        ),
        Route(f"{base}/status", user_route(status, reads_body=False), methods=["GET"]),
        Route(f"{base}/skip", user_route(skip, reads_body=True), methods=["POST"]),
        Route(
            f"{base}/check-disconnect",
            user_route(check_disconnect, reads_body=True),
            methods=["POST"],
        ),
        Route(
            f"{base}/check-room-valid",
            user_route(check_room_valid, reads_body=True),
            methods=["POST"],
        ),
        Route(
            f"{base}/left-behind-status",
            user_route(left_behind_status, reads_body=False),
            methods=["GET"],
        ),
        Route(f"{base}/events", user_route(list_events, reads_body=False), methods=["GET"]),
        *extra,
    ]
    return [Mount("/api", routes=api)]
