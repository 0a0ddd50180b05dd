"""Fast pure tests: tokens, bearer parsing, rate limiter, settings, keys, origins, after=."""

from __future__ import annotations

import asyncio
import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from pushskip import auth, keys
from pushskip.api import MAX_SEQ, ApiError, parse_after
from pushskip.auth import InvalidToken, TokenSigner, bearer_token, new_user_id
from pushskip.config import (
    DEFAULT_POLL_INTERVAL_MS,
    DEFAULT_RATE_BURST,
    DEFAULT_REMATCH_COOLDOWN_S,
    ConfigError,
    Settings,
)
from pushskip.ratelimit import RateLimiter
from pushskip.ws import OpeningTurn, origin_allowed

SECRET = "unit-test-secret"


def token_signed_at(secret: str, user_id: str, at: int) -> str:
    """A session token exactly as TokenSigner makes it, but stamped at `at` (epoch s)."""

    class StampedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return at

    serializer = URLSafeTimedSerializer(secret, salt=auth._SALT, signer=StampedSigner)
    return serializer.dumps(user_id)


# --- auth.TokenSigner -----------------------------------------------------------------


def test_token_round_trip_names_its_user() -> None:
    """A token signed by the server verifies to the user id it was made for."""
    signer = TokenSigner(SECRET, ttl_s=60)
    user = new_user_id()
    assert signer.verify(signer.sign(user)) == user


def test_new_user_ids_are_unique_and_well_formed() -> None:
    """Server-made user ids match the accepted id pattern and do not repeat."""
    ids = {new_user_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(auth.USER_ID_RE.match(i) for i in ids)


def test_token_from_another_secret_is_rejected() -> None:
    """A token signed with a different secret (a forgery) is invalid."""
    forged = TokenSigner("some-other-secret", ttl_s=60).sign(new_user_id())
    with pytest.raises(InvalidToken, match="invalid token"):
        TokenSigner(SECRET, ttl_s=60).verify(forged)


def test_tampered_token_is_rejected() -> None:
    """Changing the payload part of a valid token breaks its signature."""
    signer = TokenSigner(SECRET, ttl_s=60)
    token = signer.sign(new_user_id())
    other = signer.sign(new_user_id())
    spliced = other.split(".")[0] + "." + ".".join(token.split(".")[1:])
    with pytest.raises(InvalidToken):
        signer.verify(spliced)


def test_expired_token_is_rejected() -> None:
    """A token older than the signer's ttl is rejected as expired."""
    token = token_signed_at(SECRET, new_user_id(), int(time.time()) - 120)
    with pytest.raises(InvalidToken, match="expired"):
        TokenSigner(SECRET, ttl_s=60).verify(token)
    # The same token is fine for a signer with a longer lifetime.
    assert TokenSigner(SECRET, ttl_s=3600).verify(token).startswith("u_")


def test_token_from_the_future_is_rejected() -> None:
    """A token stamped in the future (clock games) is not accepted."""
    token = token_signed_at(SECRET, new_user_id(), int(time.time()) + 3600)
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET, ttl_s=60).verify(token)


@pytest.mark.parametrize(
    "payload", ["admin", "", "u_short", "u_" + "a" * 65, "u_bad/chars!!!!!!!!"]
)
def test_signed_token_naming_no_valid_user_id_is_rejected(payload: str) -> None:
    """Even with a good signature, a payload that is not a user id is refused."""
    signer = TokenSigner(SECRET, ttl_s=60)
    with pytest.raises(InvalidToken):
        signer.verify(signer.sign(payload))


def test_signed_non_string_payload_is_rejected() -> None:
    """A validly signed payload that is not a string is refused."""
    serializer = URLSafeTimedSerializer(SECRET, salt=auth._SALT)
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET, ttl_s=60).verify(serializer.dumps({"id": new_user_id()}))


@pytest.mark.parametrize("token", [None, "", "x" * 513, "not-a-token", "a.b.c", "...."])
def test_missing_or_malformed_token_is_rejected(token: str | None) -> None:
    """Missing, overlong and garbage tokens raise InvalidToken, never anything else."""
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET, ttl_s=60).verify(token)


def test_token_signer_repr_hides_the_secret() -> None:
    """repr(TokenSigner) never shows the secret."""
    assert SECRET not in repr(TokenSigner(SECRET, ttl_s=60))


# --- auth.bearer_token ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Token abc", None),
        ("abc", None),
    ],
)
def test_bearer_token_parsing(header: str | None, expected: str | None) -> None:
    """Only the Bearer scheme (any case) with a non-blank token yields a token."""
    assert bearer_token(header) == expected


# --- ratelimit.RateLimiter ------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_refuses() -> None:
    """A fresh key gets `burst` requests at once and no more."""
    limiter = RateLimiter(rate_per_s=1.0, burst=3)
    assert [limiter.allow("k", now=100.0) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_refills_at_its_rate() -> None:
    """Tokens come back at rate_per_s, never beyond the burst."""
    limiter = RateLimiter(rate_per_s=2.0, burst=2)
    assert limiter.allow("k", now=0.0) and limiter.allow("k", now=0.0)
    assert not limiter.allow("k", now=0.0)
    assert not limiter.allow("k", now=0.25)  # half a token back
    assert limiter.allow("k", now=0.5)  # one whole token now
    assert not limiter.allow("k", now=0.5)
    # A long idle period refills to the burst only.
    assert [limiter.allow("k", now=1000.0) for _ in range(3)] == [True, True, False]


def test_rate_limiter_keys_are_independent() -> None:
    """One key running dry does not limit another."""
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.allow("a", now=5.0)
    assert not limiter.allow("a", now=5.0)
    assert limiter.allow("b", now=5.0)


def test_rate_limiter_refused_requests_do_not_borrow() -> None:
    """Refused calls cost nothing: hammering does not push the next token further away."""
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.allow("k", now=0.0)
    for i in range(1, 10):
        assert not limiter.allow("k", now=i / 10)
    assert limiter.allow("k", now=1.0)


def test_rate_limiter_forgets_full_buckets_past_max_keys() -> None:
    """Past max_keys, buckets idle long enough to be full are dropped; busy ones kept."""
    limiter = RateLimiter(rate_per_s=1.0, burst=2, max_keys=3)
    for key in ("old1", "old2", "old3"):
        limiter.allow(key, now=0.0)
    limiter.allow("busy", now=100.0)
    assert set(limiter._buckets) == {"busy"}
    # A forgotten key starts again with a full burst.
    assert limiter.allow("old1", now=100.0) and limiter.allow("old1", now=100.0)


# --- config.Settings.from_env ---------------------------------------------------------


def test_settings_defaults_from_an_empty_environment() -> None:
    """With nothing set, the documented defaults apply and a random secret is made."""
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.poll_interval_ms == DEFAULT_POLL_INTERVAL_MS == 500
    assert settings.rematch_cooldown_s == DEFAULT_REMATCH_COOLDOWN_S == 60
    assert settings.rate_burst == DEFAULT_RATE_BURST
    assert settings.allowed_origins == ()
    assert len(settings.secret) >= 32
    assert Settings.from_env({}).secret != settings.secret


def test_settings_read_every_variable() -> None:
    """Each documented variable lands in its field, parsed to its type."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://example:6380/2",
            "PUSHSKIP_SECRET": "s3cret",
            "PUSHSKIP_ALLOWED_ORIGINS": " https://a.example/ , ,https://b.example:8443",
            "PUSHSKIP_POLL_INTERVAL_MS": "250",
            "PUSHSKIP_REMATCH_COOLDOWN_S": "7",
            "PUSHSKIP_TOKEN_TTL_S": "3600",
            "PUSHSKIP_WS_PING_INTERVAL_S": "1.5",
            "PUSHSKIP_WS_PING_TIMEOUT_S": "2.5",
            "PUSHSKIP_WS_SEND_QUEUE": "32",
            "PUSHSKIP_RATE_PER_S": "0.5",
            "PUSHSKIP_RATE_BURST": "9",
            "PUSHSKIP_QUEUE_STALE_S": "11",
            "PUSHSKIP_WATCHDOG_INTERVAL_S": "0.25",
        }
    )
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.secret == "s3cret"
    assert settings.allowed_origins == ("https://a.example", "https://b.example:8443")
    assert settings.poll_interval_ms == 250
    assert settings.rematch_cooldown_s == 7
    assert settings.token_ttl_s == 3600
    assert settings.ws_ping_interval_s == 1.5
    assert settings.ws_ping_timeout_s == 2.5
    assert settings.ws_send_queue == 32
    assert settings.rate_per_s == 0.5
    assert settings.rate_burst == 9
    assert settings.queue_stale_s == 11
    assert settings.watchdog_interval_s == 0.25


def test_settings_empty_values_mean_defaults() -> None:
    """An empty variable (as `VAR=` in a shell) is the same as an unset one."""
    settings = Settings.from_env({"REDIS_URL": "", "PUSHSKIP_REMATCH_COOLDOWN_S": ""})
    assert settings.redis_url is None
    assert settings.rematch_cooldown_s == DEFAULT_REMATCH_COOLDOWN_S


def test_settings_repr_hides_the_secret() -> None:
    """The secret never shows in repr(Settings) (it may be logged)."""
    assert "s3cret-value" not in repr(Settings.from_env({"PUSHSKIP_SECRET": "s3cret-value"}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PUSHSKIP_REMATCH_COOLDOWN_S", "abc"),
        ("PUSHSKIP_REMATCH_COOLDOWN_S", "1.5"),
        ("PUSHSKIP_REMATCH_COOLDOWN_S", "0"),
        ("PUSHSKIP_POLL_INTERVAL_MS", "-500"),
        ("PUSHSKIP_TOKEN_TTL_S", "1e3"),
        ("PUSHSKIP_QUEUE_STALE_S", "-1"),
        ("PUSHSKIP_RATE_BURST", "many"),
        ("PUSHSKIP_RATE_PER_S", "fast"),
        ("PUSHSKIP_RATE_PER_S", "0"),
        ("PUSHSKIP_RATE_PER_S", "nan"),
        ("PUSHSKIP_WS_PING_INTERVAL_S", "-1"),
        ("PUSHSKIP_WS_PING_TIMEOUT_S", "inf"),
        ("PUSHSKIP_WATCHDOG_INTERVAL_S", "NaN"),
    ],
)
def test_settings_reject_bad_values(name: str, value: str) -> None:
    """A non-number, a non-positive or a non-finite value is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are read."""
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.poll_interval_ms = 1  # type: ignore[misc]
    assert settings.with_redis_url("unix:///x").redis_url == "unix:///x"
    assert settings.redis_url is None


# --- keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("u_aaaaaaaaaaaaaaaa", "u_bbbbbbbbbbbbbbbb"),
        ("u_Zzzzzzzzzzzzzzzz", "u_aaaaaaaaaaaaaaaa"),
        ("u_-aaaaaaaaaaaaaaa", "u__aaaaaaaaaaaaaaa"),
        ("u_0aaaaaaaaaaaaaaa", "u_0aaaaaaaaaaaaaaaa"),
    ],
)
def test_rematch_cooldown_key_is_order_independent(a: str, b: str) -> None:
    """Both users of a pair name the same cooldown key, whoever asks first."""
    key = keys.rematch_cooldown(a, b)
    assert key == keys.rematch_cooldown(b, a)
    assert key.startswith(keys.REMATCH_COOLDOWN)
    assert key.removeprefix(keys.REMATCH_COOLDOWN).split(":") == sorted([a, b])


def test_rematch_cooldown_key_differs_per_pair() -> None:
    """Different pairs never share a cooldown key."""
    a, b, c = new_user_id(), new_user_id(), new_user_id()
    assert len({keys.rematch_cooldown(a, b), keys.rematch_cooldown(a, c),
                keys.rematch_cooldown(b, c)}) == 3


def test_seed_key_names_and_ttls_are_unchanged() -> None:
    """The seed-compatible flag names and TTLs are exactly API.md's."""
    assert (keys.PRE_SKIP, keys.PRE_SKIP_TTL_S) == ("pre-skip:", 30)
    assert (keys.SKIP_IN_PROGRESS, keys.SKIP_IN_PROGRESS_TTL_S) == ("skip-in-progress:", 60)
    assert (keys.FORCE_DISCONNECT, keys.FORCE_DISCONNECT_TTL_S) == ("force-disconnect:", 300)
    assert (keys.ROOM_DELETED, keys.ROOM_DELETED_TTL_S) == ("room-deleted:", 300)
    assert (keys.SKIP_NOTIFICATION, keys.SKIP_NOTIFICATION_TTL_S) == ("skip-notification:", 300)
    assert keys.match("u_x") == "match:u_x"


def test_user_channel_round_trip() -> None:
    """A user's channel name maps back to the user; other channels map to None."""
    user = new_user_id()
    assert keys.user_from_channel(keys.user_channel(user)) == user
    assert keys.user_from_channel(keys.PROBE_CHANNEL + "x") is None


# --- ws.origin_allowed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "app.example", (), True),  # not a browser: on to the token check
        (None, None, (), True),
        ("https://app.example", "app.example", (), True),  # own origin
        ("https://APP.example", "app.example", (), True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", (), False),  # other port
        ("https://evil.example", "app.example", (), False),
        ("https://app.example.evil.example", "app.example", (), False),
        ("null", "app.example", (), False),
        ("", "app.example", (), False),
        ("https://app.example", None, (), False),
        ("https://app.example", "", (), False),
        ("https://friend.example", "app.example", ("https://friend.example",), True),
        ("https://friend.example/", "app.example", ("https://friend.example",), True),
        ("http://friend.example", "app.example", ("https://friend.example",), False),
        ("https://anyone.example", "app.example", ("*",), True),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    """No Origin, the app's own host, or a listed origin ('*' for any) is allowed; else not."""
    assert origin_allowed(origin, host, allowed) is expected


# --- api.parse_after ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 0), ("", 0), ("0", 0), ("7", 7), ("007", 7), (str(MAX_SEQ), MAX_SEQ)],
)
def test_parse_after_accepts_whole_numbers(raw: str | None, expected: int) -> None:
    """Absent/empty means 0; ASCII digits up to MAX_SEQ are read as the number."""
    assert parse_after(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "-1", "+1", "1.5", "1e3", "0x10", "abc", " 1", "1 ", "1_000",
        str(MAX_SEQ + 1),
        "9" * 5000,  # longer than Python's int() digit limit
        "²",  # str.isdigit() says yes, int() says no
        "١٢",  # Arabic-Indic digits
        "１",  # fullwidth digit
    ],
)
def test_parse_after_rejects_anything_else_with_400(raw: str) -> None:
    """Anything but a plain ASCII whole number up to MAX_SEQ is ApiError 400, never ValueError."""
    with pytest.raises(ApiError) as info:
        parse_after(raw)
    assert info.value.status == 400


def test_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token verified (and remembered) while fresh is rejected once past its ttl."""
    signer = TokenSigner("s3cret", ttl_s=60)
    token = signer.sign(new_user_id())
    signer.verify(token)
    now = time.time()
    monkeypatch.setattr("pushskip.auth.time.time", lambda: now + 61)
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token)
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token)


def test_cluster_key_names_carry_one_hash_tag() -> None:
    """With the cluster's tag every key and channel name starts with {pushskip}, so all of them
    hash to one slot; without it they are the seed's names again."""
    from pushskip import keys as k

    try:
        k.use_tag(k.CLUSTER_TAG)
        assert k.match("u_a") == "{pushskip}match:u_a"
        assert k.PRE_SKIP == "{pushskip}pre-skip:" and k.QUEUE == "{pushskip}simple-matching:queue"
        assert k.user_channel("u_a") == "{pushskip}pushskip:user:u_a"
        assert k.PUBLISH == "SPUBLISH"
        assert "local K_MATCH = '{pushskip}match:'" in k.lua_constants(1000)
        assert all(getattr(k, name).startswith("{pushskip}") for name in k.TAGGED)
    finally:
        k.use_tag("")
    assert k.match("u_a") == "match:u_a" and k.PUBLISH == "PUBLISH"


async def test_an_opening_turn_is_given_back_once_and_a_long_wait_opens_without_one() -> None:
    gate = asyncio.Semaphore(1)
    first = OpeningTurn(gate, wait_s=0.05)
    await first.take()
    assert first.held
    second = OpeningTurn(gate, wait_s=0.05)
    await second.take()  # waits in vain, then opens without a turn
    assert not second.held
    second.give_back()  # gives back nothing it did not hold
    assert gate.locked()
    first.give_back()
    first.give_back()  # once only
    third = OpeningTurn(gate, wait_s=0.05)
    await third.take()
    assert third.held and gate.locked()
    third.give_back()
    assert not gate.locked()
