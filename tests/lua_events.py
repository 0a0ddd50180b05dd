"""Append events with the service's own Lua helper, as fast as Redis allows."""

from __future__ import annotations

from redis.asyncio import Redis

from pushskip.config import DEFAULT_LOG_RETENTION_S
from pushskip.scripts import compose

_BODY = "return append_event(ARGV[1], {type = ARGV[2]}, now_ms())"


async def append_events(
    redis: Redis,
    user_id: str,
    count: int,
    kind: str = "test",
    *,
    retention_s: int = DEFAULT_LOG_RETENTION_S,
) -> list[int]:
    """Append `count` events of type `kind` to the user's log (and publish them); their seqs."""
    source = compose("append_events.lua", _BODY, retention_ms=retention_s * 1000)
    script = redis.register_script(source.text)
    seqs: list[int] = []
    for start in range(0, count, 200):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(start, min(count, start + 200)):
                await script(args=[user_id, kind], client=pipe)
            seqs.extend(int(s) for s in await pipe.execute())
    return seqs
