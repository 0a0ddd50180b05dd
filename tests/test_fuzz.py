"""Property-based fuzz of every HTTP route in docs/API.md (issue 11, abuse resistance).

Hypothesis builds hostile requests for each route: right and wrong methods;
bodies that are JSON objects with fields of the wrong type, arbitrary or deep
or huge JSON, broken JSON, invalid UTF-8, lone surrogates, NUL bytes, huge
numbers; odd query strings (`after=`, `epoch=`, `userId=`, percent-encoded
bytes that are not UTF-8); missing, forged, expired, tampered or other users'
tokens; odd `Content-Type`s; another user's `userId`; the beacon `token` of
`leave`. For every example:

- the answer is never a 5xx;
- a 4xx is JSON `{"success": false, "error": <non-empty str>}` and leaves
  Redis exactly as it was (`tests.helpers.snapshot`), as does any other
  answer that is not a 2xx (a 3xx redirect);
- a 2xx is JSON with `"success": true`.

Redis is "armed" as in test_bad_input.py (the caller `me` carries the flags of
a room they were skipped out of and waits in the queue, or for `skip` is
matched again), where a valid call of a state-changing route does change
Redis; it is armed afresh after every answer that may have changed it and
every REARM_S seconds (so no TTL runs out between two snapshots).

The app runs in-process, one instance per route with its lifespan entered,
driven by httpx's ASGI transport. CI runs a fixed number of examples per
route with a derandomized (reproducible) seed; `PUSHSKIP_FUZZ_EXAMPLES=N`
runs N per route with a random seed (Hypothesis prints the failing example
and how to reproduce it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import time
import urllib.parse
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from pushskip import auth, keys
from pushskip.app import create_app, redis_clients
from pushskip.auth import TokenSigner
from pushskip.embedded import EmbeddedRedis
from pushskip.events import epoch_of
from pushskip.presence import Presence
from tests.helpers import TEST_SECRET, make_settings, snapshot
from tests.test_bad_input import BASE, ENDPOINTS

# name -> (method, path): every route of API.md, as the hand-written bad-input tests name them.
ROUTES = ENDPOINTS

# CI: this many examples per route (about 2,700 in all), reproducibly.
CI_EXAMPLES = 300
LONG_RUN = os.environ.get("PUSHSKIP_FUZZ_EXAMPLES")
EXAMPLES = int(LONG_RUN) if LONG_RUN else CI_EXAMPLES
# Arm Redis afresh at least this often: the shortest TTL in the armed state
# (pre-skip, 30 s) must not run out between a "before" and an "after" snapshot.
REARM_S = 10.0
MAX_BODY = 16 * 1024
SHUTDOWN_S = 10.0
SHUTDOWN_HANG = (
    "the app's shutdown hung: a background loop lost its cancel (Python 3.11 wait_for)"
)
# Routes whose valid call leaves the armed state as meaningful as it was (it
# reads, or only counts a session): no need to arm afresh after a 2xx.
KEEPS_ARMED = {"session", "check-room-valid", "left-behind-status"}

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    print_blob=True,
    # One app per test function, shared by its examples, on purpose.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
    ],
)


# --- placeholders: examples name users and tokens, the harness fills them in ---------
#
# A drawn request holds placeholders such as @me-token@; they are replaced by
# the current armed state's values when the request is sent, so an example
# means the same thing after Redis is armed afresh with new users.

IDS = ["@me@", "@other@", "@partner@", "@stranger@"]
TOKENS = [
    "@me-token@",
    "@other-token@",
    "@partner-token@",
    "@stranger-token@",  # valid signature, a user Redis has never seen
    "@forged-token@",  # me, signed with another secret
    "@expired-token@",  # me, signed two days ago
    "@admin-token@",  # valid signature over "admin" (not a user id)
    "@tampered-token@",  # me's token with its last character changed
    "@truncated-token@",  # me's token less its last 5 characters
]
ROOMS = ["@room@", "@current-room@"]
SEQS = ["@seq@", "@seq+1@", "@epoch@"]


def token_signed_at(secret: str, value: Any, at: int) -> str:
    """A session token as TokenSigner makes it (for any JSON value), stamped at `at`."""

    class StampedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return at

    serializer = URLSafeTimedSerializer(secret, salt=auth._SALT, signer=StampedSigner)
    return serializer.dumps(value)


def sign_any(value: Any) -> str:
    """A validly signed, current token over any JSON value (most are not user ids)."""
    try:
        return token_signed_at(TEST_SECRET, value, int(time.time()))
    except UnicodeEncodeError:  # a lone surrogate: sign the value's JSON text instead
        return token_signed_at(TEST_SECRET, json.dumps(value), int(time.time()))


# --- strategies ---------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\udc80y",
    "\ud83d\ude00",
    "\u2028",
    "\ufeff",
    "\ufffd",
    "é",
    "١٢٣",
    "²",
    "１",
    "-1",
    "null",
    "true",
    "u_" + "A" * 16,
    "u_" + "A" * 65,
    "../../etc/passwd",
    "*",
    "%00",
    "room-" + "0" * 16,
]
odd_chars = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates
    st.sampled_from(["\x00", "\x7f", "\u2028", "\ufeff", "١", "²", "１", "é", "😀"]),
)
odd_text = st.one_of(
    st.text(odd_chars, max_size=24),
    st.sampled_from(ODD_STRINGS + IDS + TOKENS + ROOMS),
    st.integers(0, 600).map(lambda n: "x" * n),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and ±Infinity too: Python's json writes and reads them
    odd_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)
valid_tokens = st.sampled_from(TOKENS)
signed_junk = json_values.map(sign_any)  # signature holds, payload is not a user id

# Per route: the body fields it reads, each with right and wrong values.
USER_ID_VALUES = st.one_of(st.sampled_from(IDS), json_values)
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "skip": {"requeue": st.one_of(st.booleans(), json_values)},
    "check-room-valid": {
        "roomName": st.one_of(
            st.sampled_from(ROOMS),
            st.integers(120, 140).map(lambda n: "r" * n),  # around the 128 cap
            st.integers(120, 140).map(lambda n: "é" * n),
            json_values,
        )
    },
    "leave": {"token": st.one_of(valid_tokens, signed_junk, json_values)},
}


@st.composite
def json_objects(draw: st.DrawFn, route: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if route != "session":
        fields["userId"] = USER_ID_VALUES
    fields.update(FIELDS.get(route, {}))
    body = draw(st.dictionaries(odd_text, json_values, max_size=3))
    for name, values in fields.items():
        if draw(st.integers(0, 3)):  # most of the time
            body[name] = draw(values)
    return body


def encode(value: Any, style: str) -> bytes:
    """`value` as JSON bytes in one of several legal (or surrogate-bearing) encodings."""
    if style == "ascii":
        return json.dumps(value).encode()
    text = json.dumps(value, ensure_ascii=False)
    if style == "utf-8":  # a lone surrogate becomes bytes that are not UTF-8
        return text.encode("utf-8", "surrogatepass")
    if style == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if style == "spaced":
        return b" \n\t" + json.dumps(value, indent=2).encode() + b"\r\n "
    return text.encode(style, "surrogatepass")  # utf-16, utf-32 and their variants


ENCODINGS = ["ascii", "utf-8", "utf-8-bom", "spaced", "utf-16", "utf-16-be", "utf-32"]
SPLICES = [
    b"\xff",
    b"\xfe\xff",
    b"\xc0\x80",  # overlong NUL
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\x80",
    b"\x00",
    b'"',
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\u0000",
    b"{",
    b"}",
    b"[",
    b",",
    b":",
    b"NaN",
    b"1e999",
]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few bytes inserted, replaced or cut: mostly broken JSON or UTF-8."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete", "truncate"]))
        piece = draw(st.one_of(st.sampled_from(SPLICES), st.binary(min_size=1, max_size=3)))
        if op == "insert":
            data[pos:pos] = piece
        elif op == "replace":
            data[pos : pos + len(piece)] = piece
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            del data[pos:]
    return bytes(data)


def nested(depth: int, kind: str, field: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "unbalanced":
        return b"[" * depth
    inner = b"[" * depth + b"]" * depth  # deep inside a field the route reads
    return b'{"' + field.encode() + b'": ' + inner + b"}"


def sized(size: int) -> bytes:
    """A valid JSON object of exactly `size` bytes (at least 11)."""
    shell = b'{"pad": ""}'
    return b'{"pad": "' + b"x" * max(0, size - len(shell)) + b'"}'


HUGE_NUMBERS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"-0",
    b"0.0",
    b"1.0",
    b"9007199254740993",
    b"18446744073709551616",
    b"1" + b"0" * 4300,  # just past Python's int digit limit
    b"1" + b"0" * 10000,
    b"0." + b"0" * 10000 + b"1",
]


def field_names(route: str) -> list[str]:
    return ["userId", *FIELDS.get(route, {}), "x"]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, each drawn about `weight` times as often as a weight of 1.

    (st.one_of would not do: it drops a strategy listed twice.)"""
    picks = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: choices[i][1])


PLAUSIBLE_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "skip": {"requeue": st.booleans()},
    "check-room-valid": {"roomName": st.sampled_from(ROOMS)},
    "leave": {"token": st.sampled_from(["@me-token@", "@other-token@"])},
}


@st.composite
def plausible_objects(draw: st.DrawFn, route: str) -> dict[str, Any]:
    """What a client would send: the route's fields with the right types."""
    body = {name: draw(values) for name, values in PLAUSIBLE_FIELDS.get(route, {}).items()}
    if route != "session" and draw(st.booleans()):
        body["userId"] = draw(st.sampled_from(IDS))
    return body


SURROGATES = ["\ud800", "\udfff", "\udc80", "a\ud800b", "\ud83d", "\ude00\ud83d"]
NULS = ["\x00", "a\x00", "\x00" * 3]


@functools.cache  # built once per route: Hypothesis validates a new strategy on first use
def bodies(route: str) -> st.SearchStrategy[bytes | None]:
    """Request bodies for `route`: what clients send, and every kind of wrong."""
    encodings = st.sampled_from(ENCODINGS)
    objects = st.builds(encode, json_objects(route), encodings)
    fields = st.sampled_from(field_names(route))
    hostile = weighted(
        (4, objects),  # fields of the wrong type, odd strings, extra keys
        # A lone surrogate ("\ud800" escaped, or its bytes raw) or a NUL, as a
        # field's value or as a key.
        (
            2,
            st.builds(
                lambda field, text, as_key, style: encode(
                    {text: 1} if as_key else {field: text}, style
                ),
                fields,
                st.sampled_from(SURROGATES + NULS),
                st.booleans(),
                encodings,
            ),
        ),
        (1, st.builds(encode, json_values, encodings)),  # any JSON, mostly not an object
        (3, objects.flatmap(mutated)),  # broken JSON, bytes that are not UTF-8
        (
            1,
            st.builds(
                nested,
                st.integers(1, MAX_BODY // 8),
                st.sampled_from(["array", "object", "unbalanced", "field"]),
                fields,
            ),
        ),
        (
            2,
            st.builds(
                sized,
                weighted(
                    (2, st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY])),
                    (1, st.integers(11, 3 * MAX_BODY)),
                ),
            ),
        ),
        (
            1,
            st.builds(
                lambda name, number: b'{"' + name.encode() + b'": ' + number + b"}",
                fields,
                st.sampled_from(HUGE_NUMBERS),
            ),
        ),
        (1, st.binary(max_size=64)),
        (1, st.sampled_from([b"", b" ", b"\r\n", b"\x00", b"{}\x00", b"\x00{}", b"{}" * 2])),
        # What a beacon or an HTML form sends.
        (1, st.builds(lambda t: f'{{"token": "{t}"}}'.encode(), valid_tokens)),
        (1, st.builds(lambda t: f"token={t}".encode(), valid_tokens)),
    )
    plausible = st.builds(encode, plausible_objects(route), encodings)
    if ROUTES[route][0] == "GET":  # a body is read only to enforce the size cap
        return weighted((6, st.none()), (1, plausible), (3, hostile))
    return weighted((1, st.none()), (3, plausible), (6, hostile))


def header_bytes(max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Header value bytes an HTTP/1.1 server lets through (no CR, LF or NUL)."""
    return st.binary(max_size=max_size).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
    )


AUTH_FORMS = [
    "Bearer {t}",
    "bearer {t}",
    "BEARER {t}",
    "Bearer   {t}   ",
    "Bearer\t{t}",
    "Bearer {t} {t}",
    "Bearer {t}, Bearer {t}",
    "Basic {t}",
    "Token {t}",
    "{t}",
    'Bearer "{t}"',
    "Bearer {t}" + "A" * 600,
]
authorization_values = st.one_of(
    st.builds(lambda form, t: form.format(t=t), st.sampled_from(AUTH_FORMS), valid_tokens),
    st.builds(lambda t: "Bearer " + t, signed_junk),
    st.sampled_from(["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer null"]),
    st.builds(lambda t: "Bearer " + t, odd_text),
    header_bytes(),
)
authorizations = weighted(
    (3, st.just(["Bearer @me-token@"])),  # most examples get past auth to the rest
    (1, st.lists(authorization_values, max_size=2)),  # none, one odd one, or two
)
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "*/*",
    "",
    ";;;",
]
content_types = st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), header_bytes())
OTHER_HEADERS = [
    "origin",
    "x-forwarded-for",
    "cookie",
    "content-encoding",
    "transfer-encoding",
    "accept",
    "accept-charset",
    "x-request-id",
]
other_headers = st.lists(
    st.tuples(st.sampled_from(OTHER_HEADERS), header_bytes()), max_size=2
)


AFTER_VALUES = [
    "",
    "true",
    "false",
    "null",
    "0",
    "1",
    "00",
    "-1",
    "+1",
    "1.5",
    "1e3",
    "0x10",
    " 1",
    "1 ",
    str(2**53),
    str(2**53 + 1),
    "9" * 20,
    "9" * 21,
    "9" * 5000,
    "²",
    "١",
    "１",
]
query_keys = st.one_of(
    st.sampled_from(["after", "epoch", "userId", "token", "after", "epoch", "userId"]),
    st.text(odd_chars, max_size=8),
)
query_values = st.one_of(
    st.sampled_from(IDS + TOKENS + SEQS + AFTER_VALUES),
    st.integers(-(2**64), 2**64).map(str),
    st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=70),  # epoch-like
    odd_text,
)


def quote(text: str) -> str:
    # surrogatepass: a lone surrogate goes out as bytes that are not UTF-8.
    return urllib.parse.quote_from_bytes(text.encode("utf-8", "surrogatepass"), safe="@")


PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#")
queries = st.one_of(
    st.just(""),
    st.lists(st.tuples(query_keys, query_values), max_size=3).map(
        lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
    ),
    st.lists(st.tuples(query_keys, st.binary(max_size=6)), min_size=1, max_size=2).map(
        lambda pairs: "&".join(
            f"{quote(k)}={urllib.parse.quote_from_bytes(v, safe='')}" for k, v in pairs
        )
    ),
    st.text(PRINTABLE, max_size=30),  # raw: stray %, &, =, ; and +
)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FOO"]


@dataclasses.dataclass(frozen=True)
class Req:
    """A request with placeholders, as Hypothesis draws and shows it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str | bytes], ...]
    body: bytes | None
    chunk: int | None  # stream the body in chunks of this size (no Content-Length)
    padded_length: bool  # Content-Length with leading zeros (same value)


@functools.cache
def requests(route: str) -> st.SearchStrategy[Req]:
    return _requests(route)


@st.composite
def _requests(draw: st.DrawFn, route: str) -> Req:
    method, path = ROUTES[route]
    method = draw(weighted((6, st.just(method)), (1, st.sampled_from(METHODS))))
    path = draw(st.sampled_from([path] * 19 + [path + "/"]))
    headers: list[tuple[str, str | bytes]] = []
    if route != "session" or draw(st.booleans()):
        headers += [("authorization", v) for v in draw(authorizations)]
    content_type = draw(content_types)
    if content_type is not None:
        headers.append(("content-type", content_type))
    headers += draw(other_headers)
    body = draw(bodies(route))
    chunk = draw(weighted((3, st.none()), (1, st.integers(1, 4096)))) if body else None
    return Req(
        method=method,
        path=path,
        query=draw(queries),
        headers=tuple(headers),
        body=body,
        chunk=chunk,
        padded_length=chunk is None and body is not None and draw(st.booleans()),
    )


# --- the harness: one in-process app per test, Redis armed as test_bad_input.py arms it


@dataclasses.dataclass
class Armed:
    values: dict[str, str]  # placeholder -> its value now
    at: float


class Fuzzer:
    def __init__(self, client: httpx.AsyncClient, redis: Redis, route: str) -> None:
        self.client = client
        self.redis = redis
        self.route = route
        self.armed: Armed | None = None
        self.arms = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    async def session(self) -> tuple[str, str]:
        response = await self.client.post("/api/session")
        assert response.status_code == 200, response.text
        body = response.json()
        return body["userId"], body["token"]

    async def call(self, token: str, path: str, json_body: Any = None) -> dict[str, Any]:
        response = await self.client.post(
            BASE + path, json=json_body or {}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def arm(self) -> Armed:
        """`me` skipped by `other` (flags set), then waiting, or for skip matched anew."""
        await self.redis.flushall()
        me, me_token = await self.session()
        other, other_token = await self.session()
        await self.call(me_token, "enqueue")
        old_room = (await self.call(other_token, "enqueue"))["match"]["roomName"]
        await self.call(other_token, "skip", {"requeue": False})
        assert (await self.call(me_token, "enqueue"))["status"] == "waiting"
        current_room = old_room
        stranger = auth.new_user_id()
        partner, partner_token = stranger, TokenSigner(TEST_SECRET, ttl_s=86400).sign(stranger)
        if self.route == "skip":
            partner, partner_token = await self.session()
            reply = await self.call(partner_token, "enqueue")
            assert reply["status"] == "matched", reply
            current_room = reply["match"]["roomName"]
        seq = int(await self.redis.get(keys.event_seq(me)) or 0)
        epoch = epoch_of(await self.redis.get(keys.event_epoch(me)))
        assert epoch, "me has an event log"
        now = int(time.time())
        values = {
            "@me@": me,
            "@other@": other,
            "@partner@": partner,
            "@stranger@": auth.new_user_id(),
            "@me-token@": me_token,
            "@other-token@": other_token,
            "@partner-token@": partner_token,
            "@stranger-token@": sign_any(auth.new_user_id()),
            "@forged-token@": TokenSigner("attacker-secret", ttl_s=86400).sign(me),
            "@expired-token@": token_signed_at(TEST_SECRET, me, now - 2 * 86400),
            "@admin-token@": sign_any("admin"),
            "@tampered-token@": me_token[:-1] + ("A" if me_token[-1] != "A" else "B"),
            "@truncated-token@": me_token[:-5],
            "@room@": old_room,
            "@current-room@": current_room,
            "@seq@": str(seq),
            "@seq+1@": str(seq + 1),
            "@epoch@": epoch,
        }
        self.arms += 1
        # A write a millisecond after the arm's last one would show as a changed score.
        await asyncio.sleep(0.002)
        return Armed(values, time.monotonic())

    def fill(self, data: bytes, armed: Armed) -> bytes:
        if b"@" not in data:
            return data
        for name, value in armed.values.items():
            data = data.replace(name.encode(), value.encode())
        return data

    def build(self, req: Req, armed: Armed) -> tuple[httpx.Request, bytes | None]:
        """The request to send, and its body (also when streamed)."""
        def filled(value: str | bytes) -> bytes:
            raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
            return self.fill(raw, armed)

        url = req.path + ("?" + filled(req.query).decode() if req.query else "")
        headers = [(name.encode(), filled(value)) for name, value in req.headers]
        body = None if req.body is None else self.fill(req.body, armed)
        content: bytes | AsyncIterator[bytes] | None = body
        if body is not None and req.chunk is not None:
            content = chunks(body, req.chunk)
        elif body is not None and req.padded_length:
            headers.append((b"content-length", b"000" + str(len(body)).encode()))
        request = self.client.build_request(req.method, url, headers=headers, content=content)
        return request, body

    async def check(self, req: Req) -> None:
        armed = self.armed
        if armed is None or time.monotonic() - armed.at > REARM_S:
            armed = self.armed = await self.arm()
        request, body = self.build(req, armed)
        before = await snapshot(self.redis)
        response = await self.client.send(request)
        status = response.status_code
        self.statuses[status] += 1
        if 200 <= status < 300 and self.route not in KEEPS_ARMED:
            self.armed = None  # it may have undone the arming: arm afresh next time
        problems = answer_problems(request, response)
        if not problems and not 200 <= status < 300:
            after = await snapshot(self.redis)
            if after != before:
                problems.append("Redis changed:\n" + redis_diff(before, after))
        if 400 <= status < 500 and not problems and response.content:
            self.errors[f"{status} {response.json()['error']}"] += 1
        if problems:
            self.armed = None
            raise AssertionError(report(request, body, response, problems))


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def answer_problems(request: httpx.Request, response: httpx.Response) -> list[str]:
    """What is wrong with the answer, by the properties in the module docstring."""
    status = response.status_code
    if status >= 500:
        return [f"a {status}: the server failed"]
    if not (200 <= status < 300 or 400 <= status < 500):
        return []
    problems: list[str] = []
    if not response.headers.get("content-type", "").startswith("application/json"):
        problems.append("not application/json")
    if request.method == "HEAD" and not response.content:
        return problems  # a HEAD answer has no body to check
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*problems, "body is not JSON"]
    if 200 <= status < 300:
        if not (isinstance(body, dict) and body.get("success") is True):
            problems.append('a 2xx without "success": true')
    elif not (
        isinstance(body, dict)
        and set(body) == {"success", "error"}
        and body["success"] is False
        and isinstance(body["error"], str)
        and body["error"]
    ):
        problems.append('a 4xx that is not {"success": false, "error": <non-empty str>}')
    return problems


def redis_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            was, now = before.get(key, "(absent)"), after.get(key, "(absent)")
            lines.append(f"  {key}: {was!r} -> {now!r}")
    return "\n".join(lines)


def report(
    request: httpx.Request, body: bytes | None, response: httpx.Response, problems: list[str]
) -> str:
    shown = body if body is None or len(body) <= 400 else body[:400] + b"..."
    headers = [(k.decode(), v) for k, v in request.headers.raw]
    return (
        "; ".join(problems)
        + f"\nrequest: {request.method} {request.url.raw_path.decode()}"
        + f"\n  headers: {headers!r}\n  body ({len(body or b'')} bytes): {shown!r}"
        + f"\nresponse: {response.status_code} {dict(response.headers)!r}"
        + f"\n  body: {response.content[:400]!r}"
    )


@pytest.fixture
async def fuzzer(
    request: pytest.FixtureRequest, redis: Redis, redis_server: EmbeddedRedis
) -> AsyncIterator[Fuzzer]:
    """The app of this test, in-process with its lifespan entered; Redis flushed."""
    route: str = request.node.callspec.params["route"]
    # A presence grace longer than any run: the sweep must not end a waiting
    # user between two snapshots (it would, 5 s after the arm's last request).
    app = create_app(make_settings(redis_server.url, presence_grace_s=3600.0))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=10
        ) as client:
            started = time.monotonic()
            found = Fuzzer(client, redis, route)
            yield found
            print(
                f"\nfuzz {route}: {found.statuses.total()} requests in "
                f"{time.monotonic() - started:.1f} s, armed {found.arms} times; "
                f"statuses {dict(sorted(found.statuses.items()))}; errors:"
            )
            for message, count in sorted(found.errors.items()):
                print(f"  {count:4d} {message}")
    finally:
        await shut_down(lifespan)


async def shut_down(lifespan: contextlib.AbstractAsyncContextManager[Any]) -> None:
    """Leave the app's lifespan, without hanging the suite on SHUTDOWN_HANG.

    The event loop stands still between Hypothesis examples, so the app's
    background loops (presence lease, sweep) are all due when it runs again;
    a cancel that lands while one of them is sending to Redis can be lost on
    Python 3.11 (see test_presence_stop_ends_when_cancelled_as_a_redis_send_completes),
    and the shutdown would wait for that loop forever. Let them finish first;
    if one is stuck all the same, cancel it again (the second cancel lands)."""
    await asyncio.sleep(0.05)
    exiting = asyncio.create_task(lifespan.__aexit__(None, None, None))
    done, _ = await asyncio.wait([exiting], timeout=SHUTDOWN_S)
    if not done:
        stuck = [t for t in asyncio.all_tasks() if t.cancelling() and t is not exiting]
        warnings.warn(
            f"{SHUTDOWN_HANG}: {sorted(t.get_name() for t in stuck)}", RuntimeWarning, stacklevel=1
        )
        for task in stuck:
            task.cancel()
    await exiting


@pytest.mark.parametrize("route", list(ROUTES))
@FUZZ_SETTINGS
@given(data=st.data())
async def test_fuzz_route(fuzzer: Fuzzer, route: str, data: st.DataObject) -> None:
    """No hostile request is a 5xx; every 4xx is the JSON error and changes nothing in Redis."""
    await fuzzer.check(data.draw(requests(route), label="request"))


def test_every_api_route_is_fuzzed() -> None:
    """A route added to the app without a place in ROUTES would go unfuzzed."""
    from pushskip import api

    (mount,) = api.routes()
    found = {(f"/api{r.path}", m) for r in mount.routes for m in r.methods if m != "HEAD"}
    assert found == {(path, method) for method, path in ROUTES.values()}


# --- what the fuzz found ----------------------------------------------------------------


async def test_presence_stop_ends_when_cancelled_as_a_redis_send_completes(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping presence ends its loops whatever they are doing at that moment.

    Found by the fuzz: its teardown hung now and then (the event loop stands
    still between examples, so every presence loop is due, and sending, when
    the lifespan ends). Here the stop is started exactly when the lease loop's
    first script call has been written to Redis, before that loop resumes."""
    commands, pubsub = redis_clients(make_settings(redis_server.url))
    presence = Presence(
        commands, grace_s=5, lease_s=3, sweep_s=3600, cooldown_s=60, retention_ms=600_000
    )
    stopping: list[asyncio.Task[None]] = []
    send = AbstractConnection._send_packed_command

    async def send_then_stop(self: AbstractConnection, command: Any) -> None:
        await send(self, command)
        if not stopping and b"EVALSHA" in b"".join(bytes(part) for part in command):
            stopping.append(asyncio.create_task(presence.stop()))

    monkeypatch.setattr(AbstractConnection, "_send_packed_command", send_then_stop)
    await presence.start()
    try:
        while not stopping:
            await asyncio.sleep(0.01)
        done, _ = await asyncio.wait(stopping, timeout=1)
        assert done, "Presence.stop() still waits, 1 s on, for a loop that lost its cancel"
    finally:
        for task in [*presence._tasks, *stopping]:
            task.cancel()  # a second cancel lands
        await asyncio.wait([*presence._tasks, *stopping], timeout=3)
        await commands.aclose()
        await pubsub.aclose()
