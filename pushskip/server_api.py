"""The server API: what the app's backend (not browsers) may do, behind `PUSHSKIP_API_KEY`.

Every route wants `Authorization: apikey <key>` (wrong or missing: 401). With
no key set the routes do not exist (404). Bodies and errors are as for the
user routes (API.md, Errors); user ids are those of either kind of token.

- `GET /api/server/users/<userId>`: where the user stands, whether they are
  present, and until when they are banned;
- `POST /api/server/end-match {"userId"}`: ends their match; both users get
  `partner-left` with reason `removed`;
- `POST /api/server/ban {"userId", "seconds"}` / `POST /api/server/unban
  {"userId"}`: a ban ends the match (the partner gets `partner-left`,
  `removed`), takes the user out of the queue, closes their sockets on every
  process (4403, `banned`) and refuses their enqueue (403) until it ends;
- `GET /api/server/stats`: waiting and matched users, open sockets and live
  processes, over all processes.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pushskip.api import ApiError, Handler, ok, read_body, read_raw_body
from pushskip.identity import APP_USER_ID
from pushskip.services import Services, services
from pushskip.store import match_view

# Ten years: longer is a mistake in the caller's units, not a ban.
MAX_BAN_S = 10 * 365 * 24 * 3600


def authorized(request: Request) -> Services:
    """The services, once the request carries the API key."""
    found = services(request)
    key = found.settings.api_key
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if (
        not key
        or scheme.lower() != "apikey"
        or not hmac.compare_digest(given.strip().encode(), key.encode())
    ):
        raise ApiError(401, "Missing or wrong API key (Authorization: apikey <key>)")
    return found


def user_id(value: object) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "userId is required and must be a string")
    if not APP_USER_ID.fullmatch(value):
        raise ApiError(400, "userId must be 1 to 64 characters of A-Z a-z 0-9 _ - . : @")
    return value


def whole_seconds(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_BAN_S:
        raise ApiError(400, f"seconds must be a whole number from 1 to {MAX_BAN_S}")
    return value


async def user(request: Request) -> JSONResponse:
    found = authorized(request)
    await read_raw_body(request)
    who = user_id(request.path_params["user_id"])
    info = await found.store.user_info(who)
    if info.stored_match is not None:
        state, match = "matched", match_view(info.stored_match, who)
    else:
        state, match = ("waiting" if info.waiting else "idle"), None
    return ok(
        {
            "userId": who,
            "state": state,
            "match": match,
            "present": info.present,
            "bannedUntil": info.banned_until,
        }
    )


async def end_match(request: Request) -> JSONResponse:
    found = authorized(request)
    who = user_id((await read_body(request)).get("userId"))
    reply = await found.store.end_match(who)
    return ok({"ended": reply.ended, "roomName": reply.room})


async def ban(request: Request) -> JSONResponse:
    found = authorized(request)
    body = await read_body(request)
    who, seconds = user_id(body.get("userId")), whole_seconds(body.get("seconds"))
    reply = await found.store.ban(who, seconds)
    return ok({"bannedUntil": reply.banned_until, "ended": reply.ended, "roomName": reply.room})


async def unban(request: Request) -> JSONResponse:
    found = authorized(request)
    who = user_id((await read_body(request)).get("userId"))
    return ok({"unbanned": await found.store.unban(who)})


async def stats(request: Request) -> JSONResponse:
    found = authorized(request)
    await read_raw_body(request)
    reply = await found.store.stats()
    payload: dict[str, Any] = {
        "waiting": reply.waiting,
        "matched": reply.matched,
        "sockets": reply.sockets,
        "processes": reply.processes,
    }
    return ok(payload)


def routes() -> list[Route]:
    """The routes under /api (mounted only when PUSHSKIP_API_KEY is set)."""
    handlers: list[tuple[str, Handler, str]] = [
        ("/server/users/{user_id}", user, "GET"),
        ("/server/end-match", end_match, "POST"),
        ("/server/ban", ban, "POST"),
        ("/server/unban", unban, "POST"),
        ("/server/stats", stats, "GET"),
    ]
    return [Route(path, handler, methods=[method]) for path, handler, method in handlers]
