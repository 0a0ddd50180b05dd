"""Settings, read once from the environment and frozen.

Every knob the service has lives here, with its default as a module constant.
`Settings.from_env()` is called by the CLI; tests build `Settings(...)` directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
from collections.abc import Mapping

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


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    secret: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    allowed_origins: tuple[str, ...] = ()
    poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS
    rematch_cooldown_s: int = DEFAULT_REMATCH_COOLDOWN_S
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ws_ping_interval_s: float = DEFAULT_WS_PING_INTERVAL_S
    ws_ping_timeout_s: float = DEFAULT_WS_PING_TIMEOUT_S
    ws_send_queue: int = DEFAULT_WS_SEND_QUEUE
    ws_slow_send_s: float = DEFAULT_WS_SLOW_SEND_S
    rate_per_s: float = DEFAULT_RATE_PER_S
    rate_burst: int = DEFAULT_RATE_BURST
    queue_stale_s: int = DEFAULT_QUEUE_STALE_S
    redis_timeout_s: float = 2.0
    watchdog_interval_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the PUSHSKIP_* variables and REDIS_URL (see API.md, Configuration)."""
        env = os.environ if environ is None else environ
        secret = env.get("PUSHSKIP_SECRET")
        if not secret:
            secret = secrets.token_urlsafe(32)
            logger.warning(
                "PUSHSKIP_SECRET is unset: using a random secret, so tokens die with this "
                "process and other hub processes will not accept them"
            )
        origins = tuple(
            o.strip().rstrip("/") for o in env.get("PUSHSKIP_ALLOWED_ORIGINS", "").split(",")
        )
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            secret=secret,
            allowed_origins=tuple(o for o in origins if o),
            poll_interval_ms=_int(env, "PUSHSKIP_POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS),
            rematch_cooldown_s=_int(env, "PUSHSKIP_REMATCH_COOLDOWN_S", DEFAULT_REMATCH_COOLDOWN_S),
            token_ttl_s=_int(env, "PUSHSKIP_TOKEN_TTL_S", DEFAULT_TOKEN_TTL_S),
            ws_ping_interval_s=_float(
                env, "PUSHSKIP_WS_PING_INTERVAL_S", DEFAULT_WS_PING_INTERVAL_S
            ),
            ws_ping_timeout_s=_float(env, "PUSHSKIP_WS_PING_TIMEOUT_S", DEFAULT_WS_PING_TIMEOUT_S),
            ws_send_queue=_int(env, "PUSHSKIP_WS_SEND_QUEUE", DEFAULT_WS_SEND_QUEUE),
            ws_slow_send_s=_float(env, "PUSHSKIP_WS_SLOW_SEND_S", DEFAULT_WS_SLOW_SEND_S),
            rate_per_s=_float(env, "PUSHSKIP_RATE_PER_S", DEFAULT_RATE_PER_S),
            rate_burst=_int(env, "PUSHSKIP_RATE_BURST", DEFAULT_RATE_BURST),
            queue_stale_s=_int(env, "PUSHSKIP_QUEUE_STALE_S", DEFAULT_QUEUE_STALE_S),
            watchdog_interval_s=_float(env, "PUSHSKIP_WATCHDOG_INTERVAL_S", 5.0),
        )

    def with_redis_url(self, url: str) -> Settings:
        return dataclasses.replace(self, redis_url=url)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {raw!r}")
    return value
