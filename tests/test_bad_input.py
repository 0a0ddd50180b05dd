"""Every client mistake gets API.md's status code as JSON and changes nothing in Redis.

Each test first "arms" Redis: the caller `me` has disconnect flags from a room
they were skipped out of, and is waiting in the queue (or, for skip, matched
again). In that state a *valid* call of every state-changing endpoint does
change Redis (`test_valid_call_on_armed_state_changes_redis` proves it), so an
unchanged snapshot after a rejected call means the rejection really happened
before anything was touched.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from redis.asyncio import Redis

from pushskip import auth
from pushskip.auth import TokenSigner
from pushskip.config import DEFAULT_MAX_BODY_BYTES
from pushskip.embedded import EmbeddedRedis
from tests.helpers import TEST_SECRET, User, make_settings, new_user, run_server, snapshot

BASE = "/api/simple-matching/"
# name -> (method, path)
ENDPOINTS: dict[str, tuple[str, str]] = {
    "session": ("POST", "/api/session"),
    "enqueue": ("POST", BASE + "enqueue"),
    "leave": ("POST", BASE + "leave"),
    "status": ("GET", BASE + "status"),
    "skip": ("POST", BASE + "skip"),
    "check-disconnect": ("POST", BASE + "check-disconnect"),
    "check-room-valid": ("POST", BASE + "check-room-valid"),
    "left-behind-status": ("GET", BASE + "left-behind-status"),
    "events": ("GET", BASE + "events"),
}
USER_ENDPOINTS = [name for name in ENDPOINTS if name != "session"]
POST_ENDPOINTS = [name for name, (method, _) in ENDPOINTS.items() if method == "POST"]
USER_POST_ENDPOINTS = [name for name in POST_ENDPOINTS if name != "session"]
GET_ENDPOINTS = [name for name, (method, _) in ENDPOINTS.items() if method == "GET"]
# Endpoints whose valid call changes Redis in the armed state.
MUTATING = ["enqueue", "leave", "status", "skip", "check-disconnect", "events"]


# --- a server shared by the module (its state is all in Redis, flushed per test) ------


@pytest.fixture(scope="module")
def server_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """One real server in a thread of its own for the whole module: cheap tests."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def serve() -> None:
        found["stop"] = asyncio.Event()
        try:
            async with run_server(make_settings(redis_server.url)) as url:
                found["url"] = url
                ready.set()
                await found["stop"].wait()
        finally:
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(30)
    assert "url" in found, "server did not start"
    try:
        yield found["url"]
    finally:
        loop.call_soon_threadsafe(found["stop"].set)
        thread.join(30)
        loop.close()


@pytest.fixture
async def client(server_url: str, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    # Depends on `redis` so Redis is flushed before each test.
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as http:
        yield http


class Armed:
    def __init__(self, me: User, other: User, old_room: str, partner: User | None) -> None:
        self.me = me
        self.other = other  # the user who skipped `me` out of old_room
        self.old_room = old_room
        self.partner = partner


async def arm(http: httpx.AsyncClient, endpoint: str) -> Armed:
    """`me` skipped by `other` (flags set), then waiting — or, for skip, matched anew."""
    me, other = await new_user(http), await new_user(http)
    await me.call("enqueue")
    old_room = (await other.call("enqueue"))["match"]["roomName"]
    await other.call("skip", {"requeue": False})
    assert (await me.call("enqueue"))["status"] == "waiting"
    partner = None
    if endpoint == "skip":
        partner = await new_user(http)
        assert (await partner.call("enqueue"))["status"] == "matched"
    return Armed(me, other, old_room, partner)


def valid_body(endpoint: str, armed: Armed) -> dict[str, Any]:
    if endpoint == "check-room-valid":
        return {"roomName": armed.old_room}
    if endpoint == "skip":
        return {"requeue": True}
    return {}


def token_signed_at(secret: str, user_id: str, at: int) -> str:
    """A session token as TokenSigner makes it, but stamped at `at` (epoch s)."""

    class StampedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return at

    return URLSafeTimedSerializer(secret, salt=auth._SALT, signer=StampedSigner).dumps(user_id)


async def send(
    http: httpx.AsyncClient,
    endpoint: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
    content: Any = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    method, path = ENDPOINTS[endpoint]
    kwargs: dict[str, Any] = {"headers": headers or {}, "params": params}
    if content is not None:
        kwargs["content"] = content
    elif json is not None and method == "POST":
        kwargs["json"] = json
    return await http.request(method, path, **kwargs)


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"success", "error"}, body
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]


async def rejected_without_change(
    http: httpx.AsyncClient, redis: Redis, endpoint: str, status: int, **request: Any
) -> None:
    before = await snapshot(redis)
    await asyncio.sleep(0.003)  # a touch a ms later would change a queue score
    response = await send(http, endpoint, **request)
    assert_error(response, status)
    assert await snapshot(redis) == before


# --- the armed state is meaningful ----------------------------------------------------


@pytest.mark.parametrize("endpoint", MUTATING)
async def test_valid_call_on_armed_state_changes_redis(
    client: httpx.AsyncClient, redis: Redis, endpoint: str
) -> None:
    """A valid call in the armed state changes Redis, so 'unchanged' below means something."""
    armed = await arm(client, endpoint)
    before = await snapshot(redis)
    await asyncio.sleep(0.003)
    response = await send(
        client, endpoint, headers=armed.me.headers, json=valid_body(endpoint, armed)
    )
    assert response.status_code == 200, response.text
    assert await snapshot(redis) != before


@pytest.mark.parametrize("endpoint", USER_ENDPOINTS)
async def test_valid_call_with_own_user_id_is_accepted(
    client: httpx.AsyncClient, endpoint: str
) -> None:
    """Old clients sending their own userId (body or query) are served normally."""
    armed = await arm(client, endpoint)
    me = armed.me
    if ENDPOINTS[endpoint][0] == "POST":
        body = {**valid_body(endpoint, armed), "userId": me.id}
        response = await send(client, endpoint, headers=me.headers, json=body)
    else:
        response = await send(client, endpoint, headers=me.headers, params={"userId": me.id})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


# --- 400: body not a JSON object ------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{'requeue': true}", id="single-quotes"),
    pytest.param(b'{"a": 1}}', id="trailing-garbage"),
    pytest.param(b"\xff\xfe\x00{", id="not-utf8"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"5", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="deeply-nested-array"),
    pytest.param(b'{"a":' * 2000 + b"1" + b"}" * 2000, id="deeply-nested-object"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
async def test_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, redis: Redis, endpoint: str, body: bytes
) -> None:
    """Malformed JSON, or JSON that is not an object, is 400 and changes nothing."""
    armed = await arm(client, endpoint)
    headers = {**armed.me.headers, "content-type": "application/json"}
    await rejected_without_change(client, redis, endpoint, 400, headers=headers, content=body)


# --- 400: wrong types and missing fields ----------------------------------------------

WRONG_FIELDS = [
    *[("skip", {"requeue": v}) for v in ("yes", "true", 1, 0, None, [True], {"v": True})],
    *[("check-room-valid", {"roomName": v}) for v in (5, None, True, ["r"], {"r": 1}, "")],
    ("check-room-valid", {}),
    ("check-room-valid", {"room": "room-abc"}),
    ("check-room-valid", {"roomName": "r" * 129}),
    *[(e, {"userId": v}) for e in USER_POST_ENDPOINTS for v in (5, True, ["u"], {"id": "u"})],
]


@pytest.mark.parametrize(
    ("endpoint", "fields"), WRONG_FIELDS, ids=[f"{e}-{f}" for e, f in WRONG_FIELDS]
)
async def test_wrongly_typed_or_missing_field_is_400(
    client: httpx.AsyncClient, redis: Redis, endpoint: str, fields: dict[str, Any]
) -> None:
    """A field of the wrong type, or a missing required one, is 400 and changes nothing."""
    armed = await arm(client, endpoint)
    body = {**valid_body(endpoint, armed), **fields}
    if endpoint == "check-room-valid" and "roomName" not in fields:
        body.pop("roomName")
    await rejected_without_change(client, redis, endpoint, 400, headers=armed.me.headers, json=body)


# --- 413: body over 16 KiB ------------------------------------------------------------


def padded_json(size: int) -> bytes:
    """A valid JSON object of exactly `size` bytes."""
    shell = b'{"pad": ""}'
    return b'{"pad": "' + b"x" * (size - len(shell)) + b'"}'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_body_over_16_kib_is_413(
    client: httpx.AsyncClient, redis: Redis, endpoint: str, chunked: bool
) -> None:
    """A 17 KiB body is 413 on every endpoint, declared or streamed, and changes nothing."""
    armed = await arm(client, endpoint)
    body = padded_json(17 * 1024)
    assert len(body) == 17 * 1024

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1024):
            yield body[i : i + 1024]

    headers = {**armed.me.headers, "content-type": "application/json"}
    await rejected_without_change(
        client, redis, endpoint, 413, headers=headers, content=stream() if chunked else body
    )


async def test_body_of_exactly_16_kib_is_accepted(client: httpx.AsyncClient) -> None:
    """The cap is 'over 16 KiB': a body of exactly 16384 bytes is still served."""
    armed = await arm(client, "check-room-valid")
    shell = b'{"roomName": "r", "pad": ""}'
    body = shell[:-2] + b"x" * (DEFAULT_MAX_BODY_BYTES - len(shell)) + shell[-2:]
    assert len(body) == DEFAULT_MAX_BODY_BYTES
    response = await send(
        client, "check-room-valid", headers=armed.me.headers, content=body
    )
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is False


# --- 401: missing, forged or expired token --------------------------------------------

TOKEN_KINDS = [
    "missing",
    "empty-bearer",
    "basic-scheme",
    "garbage",
    "forged",
    "expired",
    "not-a-user",
    "overlong",
    "token-in-query-only",
]


def auth_headers(kind: str, me: User) -> dict[str, str]:
    """Authorization headers of a given kind of bad token, all naming `me` where they can."""
    now = int(time.time())
    token = {
        "missing": None,
        "empty-bearer": "",
        "basic-scheme": None,
        "garbage": "not.a.token",
        "forged": TokenSigner("attacker-secret", ttl_s=86400).sign(me.id),
        "expired": token_signed_at(TEST_SECRET, me.id, now - 2 * 86400),
        "not-a-user": TokenSigner(TEST_SECRET, ttl_s=86400).sign("admin"),
        "overlong": me.token + "A" * 600,
        "token-in-query-only": None,
    }[kind]
    if kind == "basic-scheme":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if kind == "empty-bearer":
        return {"Authorization": "Bearer"}
    if token is None:
        return {}
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", TOKEN_KINDS)
@pytest.mark.parametrize("endpoint", USER_ENDPOINTS)
async def test_bad_token_is_401(
    client: httpx.AsyncClient, redis: Redis, endpoint: str, kind: str
) -> None:
    """A missing, malformed, forged or expired token is 401 and changes nothing."""
    armed = await arm(client, endpoint)
    params = {"token": armed.me.token} if kind == "token-in-query-only" else None
    await rejected_without_change(
        client,
        redis,
        endpoint,
        401,
        headers=auth_headers(kind, armed.me),
        json=valid_body(endpoint, armed),
        params=params,
    )


async def test_expired_token_error_says_expired(client: httpx.AsyncClient) -> None:
    """An expired token's 401 tells the client so (it should make a new session)."""
    me = await new_user(client)
    response = await send(client, "status", headers=auth_headers("expired", me))
    assert_error(response, 401)
    assert "expired" in response.json()["error"].lower()


# --- 403: another user's id -----------------------------------------------------------


FORGED_IDS = [(e, "query") for e in USER_ENDPOINTS] + [(e, "body") for e in USER_POST_ENDPOINTS]


@pytest.mark.parametrize(("endpoint", "where"), FORGED_IDS)
async def test_another_users_id_is_403(
    client: httpx.AsyncClient, redis: Redis, endpoint: str, where: str
) -> None:
    """A userId (in the body or the query) naming anyone but the token's user is 403."""
    armed = await arm(client, endpoint)
    victim = armed.other.id
    body = valid_body(endpoint, armed)
    params = None
    if where == "body":
        body = {**body, "userId": victim}
    else:
        params = {"userId": victim}
    await rejected_without_change(
        client, redis, endpoint, 403, headers=armed.me.headers, json=body, params=params
    )


# --- 400: bad `after` -----------------------------------------------------------------

BAD_AFTER = ["-1", "+1", "abc", "1.5", "1e3", "0x10", " 1", str(2**53 + 1),
             "9" * 30, "9" * 5000, "²", "١", "１"]


@pytest.mark.parametrize("after", BAD_AFTER, ids=[repr(a[:8]) for a in BAD_AFTER])
async def test_bad_after_is_400(client: httpx.AsyncClient, redis: Redis, after: str) -> None:
    """events?after= anything but a whole number >= 0 is 400 (never 500), changing nothing."""
    armed = await arm(client, "events")
    await rejected_without_change(
        client, redis, "events", 400, headers=armed.me.headers, params={"after": after}
    )


# --- 404 / 405 ------------------------------------------------------------------------

UNKNOWN = [
    ("GET", "/api/nope"),
    ("POST", "/api/nope"),
    ("POST", "/api/simple-matching/nope"),
    ("GET", "/api/simple-matching/"),
    ("GET", "/no-such-page.html"),
]


@pytest.mark.parametrize(("method", "path"), UNKNOWN)
async def test_unknown_route_is_404_json(
    client: httpx.AsyncClient, redis: Redis, method: str, path: str
) -> None:
    """A path nobody serves is 404 with the JSON error shape."""
    me = await new_user(client)
    before = await snapshot(redis)
    response = await client.request(method, path, headers=me.headers)
    assert_error(response, 404)
    assert await snapshot(redis) == before


WRONG_METHOD = [
    ("GET", "session"),
    ("DELETE", "session"),
    ("GET", "enqueue"),
    ("PUT", "leave"),
    ("POST", "status"),
    ("GET", "skip"),
    ("DELETE", "skip"),
    ("GET", "check-disconnect"),
    ("GET", "check-room-valid"),
    ("POST", "left-behind-status"),
    ("POST", "events"),
]


@pytest.mark.parametrize(("method", "endpoint"), WRONG_METHOD)
async def test_wrong_method_is_405_json(
    client: httpx.AsyncClient, redis: Redis, method: str, endpoint: str
) -> None:
    """A known API path with the wrong method is 405 JSON with an Allow header, changing nothing."""
    armed = await arm(client, endpoint)
    before = await snapshot(redis)
    response = await client.request(method, ENDPOINTS[endpoint][1], headers=armed.me.headers)
    assert_error(response, 405)
    assert ENDPOINTS[endpoint][0] in response.headers.get("allow", "")
    assert await snapshot(redis) == before


# --- 429 ------------------------------------------------------------------------------


async def test_rate_limited_request_is_429_and_changes_nothing(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Past the per-user burst, requests are 429 JSON and change nothing in Redis."""
    settings = make_settings(redis_server.url, rate_per_s=0.001, rate_burst=4)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        armed = await arm(http, "enqueue")  # me: 2 of 4 requests (two enqueues)
        await armed.me.call("status")  # the 3rd
        await armed.me.call("check-room-valid", {"roomName": armed.old_room})  # the 4th
        for endpoint in ("enqueue", "leave", "check-disconnect", "events"):
            await rejected_without_change(
                http, redis, endpoint, 429, headers=armed.me.headers, json={}
            )
        # Another user is not affected.
        assert (await armed.other.call("status"))["state"] == "idle"
