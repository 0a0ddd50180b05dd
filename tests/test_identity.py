"""Your app's own users: JWTs signed by the app's backend, beside pushskip's sessions.

Unit tests drive `AppTokens` / `JwksKeys` against a JWKS the test serves over
real HTTP; end-to-end tests run the app with the app's keys configured and let
app users (HS256 and RS256) and anonymous session users match, skip and leave
over HTTP and the socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from redis.asyncio import Redis

from pushskip.auth import InvalidToken, TokenSigner
from pushskip.config import ConfigError, Settings
from pushskip.embedded import EmbeddedRedis
from pushskip.identity import AppTokens, Identity
from pushskip.jwks import JwksKeys
from tests.app_backend import (
    APP_JWT_SECRET,
    JwksServer,
    SigningKey,
    app_claims,
    hs256_token,
)
from tests.helpers import TEST_SECRET, User, make_settings, new_user, run_server

RSA_KEY = SigningKey("rsa-1", "RS256")
EC_KEY = SigningKey("ec-1", "ES256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_jwt(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[JwksServer, str]]:
    server = JwksServer(RSA_KEY, EC_KEY)
    async with server.running() as url:
        yield server, url


@pytest.fixture
async def keys_of(jwks_server: tuple[JwksServer, str]) -> AsyncIterator[JwksKeys]:
    _, url = jwks_server
    keys = JwksKeys(url, min_refetch_s=5.0, fetch_timeout_s=1.0)
    await keys.start()
    yield keys
    await keys.stop()


def app_tokens(jwks: JwksKeys | None, **kw: Any) -> AppTokens:
    values: dict[str, Any] = {"secret": APP_JWT_SECRET, "audience": None, "issuer": None}
    values.update(kw)
    return AppTokens(jwks=jwks, **values)


async def refused(tokens: AppTokens, token: str, match: str | None = None) -> str:
    with pytest.raises(InvalidToken, match=match or None) as caught:
        await tokens.verify(token)
    return str(caught.value)


# --- what is accepted -------------------------------------------------------------------


async def test_hs256_token_names_its_sub() -> None:
    """An HS256 JWT signed with PUSHSKIP_JWT_SECRET is its `sub`."""
    tokens = app_tokens(None)
    assert await tokens.verify(hs256_token("alice@example.com")) == "alice@example.com"


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
async def test_jwks_keys_verify_rs256_and_es256(keys_of: JwksKeys, key: SigningKey) -> None:
    """RS256 and ES256 tokens are checked against the JWKS key their `kid` names."""
    tokens = app_tokens(keys_of, secret=None)
    assert await tokens.verify(key.sign("user-42")) == "user-42"


async def test_a_new_kid_is_fetched_once_and_accepted(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """Key rotation: a token with a kid the cache lacks fetches the JWKS again and is
    accepted; a second unknown kid soon after does not fetch again (and is refused)."""
    server, url = jwks_server
    keys = JwksKeys(url, min_refetch_s=60.0, fetch_timeout_s=2.0)
    await keys.start()
    try:
        tokens = app_tokens(keys, secret=None)
        assert await tokens.verify(RSA_KEY.sign("before")) == "before"
        fetched = server.requests
        rotated = SigningKey("rsa-2", "RS256")
        server.keys.append(rotated)
        assert await tokens.verify(rotated.sign("after")) == "after"
        assert server.requests == fetched + 1
        unknown = SigningKey("rsa-3", "RS256")
        server.keys.append(unknown)
        await refused(tokens, unknown.sign("too-soon"), "unknown key")
        assert server.requests == fetched + 1, "fetched again within min_refetch_s"
        # The first key still works without any fetch.
        assert await tokens.verify(RSA_KEY.sign("still")) == "still"
    finally:
        await keys.stop()


async def test_a_key_withdrawn_from_the_jwks_stops_working(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """A token verified before is refused once a refresh no longer lists its key."""
    server, url = jwks_server
    keys = JwksKeys(url, min_refetch_s=0.0, refresh_s=0.2, fetch_timeout_s=2.0)
    await keys.start()
    try:
        tokens = app_tokens(keys, secret=None)
        token = EC_KEY.sign("carol")
        assert await tokens.verify(token) == "carol"
        server.keys.remove(EC_KEY)
        async with asyncio.timeout(10):
            while keys.has(EC_KEY.kid):
                await asyncio.sleep(0.05)
        await refused(tokens, token, "unknown key")
    finally:
        server.keys.append(EC_KEY)
        await keys.stop()


async def test_within_the_leeway_is_accepted() -> None:
    """exp 20 s ago and nbf 20 s ahead are inside the 30 s leeway."""
    tokens = app_tokens(None)
    now = int(time.time())
    token = hs256_token("dave", exp=now - 20, nbf=now + 20, iat=now + 20)
    assert await tokens.verify(token) == "dave"


async def test_aud_and_iss_are_checked_when_configured() -> None:
    """With an audience and issuer set, a token must name both; without, `aud` is ignored."""
    tokens = app_tokens(None, audience="pushskip", issuer="https://app.example")
    good = hs256_token("erin", aud="pushskip", iss="https://app.example")
    assert await tokens.verify(good) == "erin"
    await refused(tokens, hs256_token("erin", aud="other", iss="https://app.example"))
    await refused(tokens, hs256_token("erin", aud="pushskip", iss="https://evil.example"))
    await refused(tokens, hs256_token("erin", iss="https://app.example"))  # no aud
    await refused(tokens, hs256_token("erin", aud="pushskip"))  # no iss
    lenient = app_tokens(None)
    assert await lenient.verify(hs256_token("erin", aud="anything")) == "erin"


# --- what is refused --------------------------------------------------------------------

# Times as offsets from when the test runs (the module may be imported minutes before).
BAD_CLAIMS = [
    pytest.param({"exp": -120}, "expired", id="expired"),
    pytest.param({"nbf": 300}, "not yet valid", id="not-yet-valid"),
    pytest.param({"iat": 300}, "not yet valid", id="issued-in-the-future"),
    pytest.param({"exp": None}, "", id="no-exp"),
    pytest.param({"exp": "soon"}, "", id="exp-not-a-number"),
    pytest.param({"sub": None}, "", id="no-sub"),
    pytest.param({"sub": 42}, "", id="sub-not-a-string"),
    pytest.param({"sub": ""}, "", id="empty-sub"),
    pytest.param({"sub": "a b"}, "sub", id="sub-with-a-space"),
    pytest.param({"sub": "x" * 65}, "sub", id="sub-too-long"),
    pytest.param({"sub": "../../etc"}, "sub", id="sub-with-slashes"),
    pytest.param({"sub": "é"}, "sub", id="sub-not-ascii"),
]


@pytest.mark.parametrize(("claims", "why"), BAD_CLAIMS)
async def test_bad_claims_are_refused(claims: dict[str, Any], why: str) -> None:
    """Expired, not yet valid, no exp, and a sub outside 1-64 of A-Za-z0-9_-.:@ are refused."""
    now = int(time.time())
    timed = {
        k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in claims.items()
    }
    payload = {k: v for k, v in {**app_claims("frank"), **timed}.items() if v is not None}
    token = jwt.encode(payload, APP_JWT_SECRET, "HS256")
    await refused(app_tokens(None), token, why)


async def test_alg_none_is_refused(keys_of: JwksKeys) -> None:
    """An unsigned token (`alg: none`) is refused, whatever else is configured."""
    token = hand_made_jwt({"alg": "none", "typ": "JWT"}, app_claims("mallory"), None)
    await refused(app_tokens(keys_of), token, "algorithm")
    token = hand_made_jwt({"alg": "None", "kid": RSA_KEY.kid}, app_claims("mallory"), None)
    await refused(app_tokens(keys_of), token, "algorithm")


@pytest.mark.parametrize("secret", [None, APP_JWT_SECRET], ids=["jwks-only", "jwks-and-secret"])
async def test_hs256_keyed_with_the_rsa_public_key_is_refused(
    keys_of: JwksKeys, secret: str | None
) -> None:
    """Algorithm confusion: an HS256 token whose HMAC key is the RSA public key (PEM or
    JWK text) never verifies."""
    tokens = app_tokens(keys_of, secret=secret)
    pem = RSA_KEY.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for hmac_key in (pem, json.dumps(RSA_KEY.jwk).encode()):
        header = {"alg": "HS256", "typ": "JWT", "kid": RSA_KEY.kid}
        await refused(tokens, hand_made_jwt(header, app_claims("mallory"), hmac_key))


async def test_an_oct_key_in_the_jwks_is_never_an_hmac_secret(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """A shared-secret (oct) key published in the JWKS does not make HS256 tokens valid."""
    server, url = jwks_server
    secret = b"published-in-the-jwks-by-mistake-0123456789"

    class OctKey(SigningKey):
        def __init__(self) -> None:
            self.kid, self.alg = "oct-1", "HS256"
            self.jwk = {"kty": "oct", "kid": "oct-1", "k": b64(secret)}

    server.keys.append(OctKey())
    keys = JwksKeys(url, fetch_timeout_s=2.0)
    await keys.start()
    try:
        tokens = app_tokens(keys, secret=None)
        token = jwt.encode(app_claims("mallory"), secret, "HS256", headers={"kid": "oct-1"})
        await refused(tokens, token, "algorithm")
    finally:
        await keys.stop()


async def test_wrong_secret_and_tampered_payload_are_refused() -> None:
    """An HS256 token signed with another secret, or with its payload changed, is refused."""
    tokens = app_tokens(None)
    await refused(tokens, hs256_token("grace", secret="another-secret-that-is-long-enough-00"))
    header, _, signature = hs256_token("grace").split(".")
    forged_payload = b64(json.dumps(app_claims("admin")).encode())
    await refused(tokens, f"{header}.{forged_payload}.{signature}")


async def test_a_key_of_another_type_than_its_alg_is_refused(keys_of: JwksKeys) -> None:
    """A token claiming ES256 with the RSA key's kid is refused (the key is for RS256)."""
    forged = jwt.encode(app_claims("mallory"), EC_KEY.private, "ES256", headers={"kid": "rsa-1"})
    await refused(app_tokens(keys_of, secret=None), forged)


# --- a JWKS server that is down or slow ---------------------------------------------------


async def test_jwks_down_refuses_unknown_keys_and_keeps_known_ones(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """With the JWKS answering 503, a known kid still verifies; an unknown one is 401."""
    server, url = jwks_server
    keys = JwksKeys(url, min_refetch_s=0.0, fetch_timeout_s=1.0)
    await keys.start()
    try:
        tokens = app_tokens(keys, secret=None)
        assert await tokens.verify(RSA_KEY.sign("before")) == "before"
        server.status = 503
        stranger = SigningKey("rsa-9", "RS256")
        await refused(tokens, stranger.sign("nobody"), "unknown key")
        assert await tokens.verify(RSA_KEY.sign("known")) == "known"
    finally:
        await keys.stop()


async def test_jwks_slow_stalls_no_known_key(jwks_server: tuple[JwksServer, str]) -> None:
    """While a fetch for an unknown kid hangs on a slow JWKS, tokens with known keys are
    verified without waiting for it; the unknown one is refused once the wait is over."""
    server, url = jwks_server
    keys = JwksKeys(url, min_refetch_s=0.0, fetch_timeout_s=1.0)
    await keys.start()
    try:
        tokens = app_tokens(keys, secret=None)
        assert await tokens.verify(EC_KEY.sign("warm")) == "warm"
        server.delay_s = 30.0
        unknown = asyncio.create_task(tokens.verify(SigningKey("ec-9", "ES256").sign("who")))
        async with asyncio.timeout(5):
            while server.requests < 2:  # the fetch for ec-9 is under way
                await asyncio.sleep(0.01)
        for i in range(20):
            assert await tokens.verify(EC_KEY.sign(f"known-{i}")) == f"known-{i}"
            assert await tokens.verify(RSA_KEY.sign(f"rsa-{i}")) == f"rsa-{i}"
        assert not unknown.done(), "the known keys waited for the slow fetch"
        with pytest.raises(InvalidToken, match="unknown key"):
            await unknown
    finally:
        await keys.stop()


# --- settings ---------------------------------------------------------------------------


def test_settings_refuse_a_short_jwt_secret_and_a_bad_jwks_url() -> None:
    """PUSHSKIP_JWT_SECRET under 32 bytes and a JWKS URL that is not http(s) are refused."""
    with pytest.raises(ConfigError, match="PUSHSKIP_JWT_SECRET"):
        Settings.from_env({"PUSHSKIP_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match="PUSHSKIP_JWKS_URL"):
        Settings.from_env({"PUSHSKIP_JWKS_URL": "file:///etc/keys"})
    settings = Settings.from_env(
        {"PUSHSKIP_JWT_SECRET": APP_JWT_SECRET, "PUSHSKIP_ANONYMOUS_SESSIONS": "false"}
    )
    assert settings.app_tokens and not settings.anonymous_sessions
    assert APP_JWT_SECRET not in repr(settings)


async def test_identity_tells_the_two_kinds_apart() -> None:
    """One call answers for a session token and an app JWT; a JWT is refused when the app's
    tokens are not configured."""
    signer = TokenSigner(TEST_SECRET, ttl_s=60)
    session_user = "u_" + "a" * 22
    both = Identity(signer, app_tokens(None))
    assert await both.verify(signer.sign(session_user)) == session_user
    assert await both.verify(hs256_token("app-user")) == "app-user"
    only_sessions = Identity(signer)
    with pytest.raises(InvalidToken):
        await only_sessions.verify(hs256_token("app-user"))


# --- end to end: app users beside anonymous sessions ------------------------------------


async def app_user(http: httpx.AsyncClient, user_id: str, token: str) -> User:
    return User(http, user_id, token)


async def test_app_users_and_sessions_match_skip_and_leave_over_http_and_the_socket(
    redis: Redis, redis_server: EmbeddedRedis, jwks_server: tuple[JwksServer, str]
) -> None:
    """App users (HS256 and RS256 from the JWKS) and an anonymous session user enqueue,
    match, skip and leave over HTTP and the socket, and get their events pushed."""
    _, url = jwks_server
    settings = make_settings(redis_server.url, jwt_secret=APP_JWT_SECRET, jwks_url=url)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice = await app_user(http, "alice", hs256_token("alice"))
        bob = await app_user(http, "bob@example.com", RSA_KEY.sign("bob@example.com"))
        anon = await new_user(http)
        ws_url = base.replace("http", "ws") + "/ws?token="
        async with websockets.connect(ws_url + bob.token) as bob_ws:
            hello = json.loads(await bob_ws.recv())
            assert hello["type"] == "hello" and hello["userId"] == "bob@example.com"
            assert (await alice.call("enqueue"))["status"] == "waiting"
            # bob enqueues over the socket.
            await bob_ws.send(json.dumps({"type": "enqueue", "id": "e1"}))
            seen = [json.loads(await bob_ws.recv()) for _ in range(2)]
            reply = next(m for m in seen if m["type"] == "reply")
            assert reply["status"] == 200 and reply["body"]["status"] == "matched"
            assert reply["body"]["match"]["partnerId"] == "alice"
            # alice skips over HTTP: bob's socket gets partner-skipped.
            assert (await alice.call("skip", {"requeue": False}))["skipped"] is True
            event = json.loads(await bob_ws.recv())
            assert event["type"] == "partner-skipped" and event["skippedBy"] == "alice"
        # The anonymous user and an app user meet; the app user leaves by beacon body.
        await anon.call("enqueue")
        matched = await alice.call("enqueue")
        assert matched["status"] == "matched" and matched["match"]["partnerId"] == anon.id
        beacon = await http.post(
            "/api/simple-matching/leave",
            content=json.dumps({"token": alice.token}),
            headers={"content-type": "text/plain"},
        )
        assert beacon.status_code == 200, beacon.text
        events = (await anon.call("events?after=0"))["events"]
        assert events[-1]["type"] == "partner-left" and events[-1]["reason"] == "left"
        # A bad app token is 401 over HTTP and 4401 on the socket.
        forged = hs256_token("alice", secret="not-the-apps-secret-but-long-enough!")
        response = await http.get(
            "/api/simple-matching/status", headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401
        async with websockets.connect(ws_url + forged) as bad:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await bad.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_anonymous_sessions_off_is_404_and_app_users_still_get_in(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """PUSHSKIP_ANONYMOUS_SESSIONS=false: POST /api/session is 404; app JWTs still work."""
    settings = make_settings(redis_server.url, jwt_secret=APP_JWT_SECRET, anonymous_sessions=False)
    async with run_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.post("/api/session")
        assert response.status_code == 404
        assert response.json()["success"] is False
        user = await app_user(http, "only-app", hs256_token("only-app"))
        assert (await user.call("status"))["state"] == "idle"
