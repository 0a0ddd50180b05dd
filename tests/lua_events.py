"""Append events with the service's own Lua helper, as fast as Redis allows."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis

from pushskip import keys
from pushskip.scripts import LOG_KEEP_MS

_BODY = "return append_event(ARGV[1], {type = ARGV[2]}, now_ms())"


def _source() -> str:
    lib = (resources.files("pushskip") / "lua" / "lib.lua").read_text()
    return keys.lua_constants(LOG_KEEP_MS) + lib + _BODY


async def append_events(redis: Redis, user_id: str, count: int, kind: str = "test") -> list[int]:
    """Append `count` events of type `kind` to the user's log (and publish them); their seqs."""
    script = redis.register_script(_source())
    seqs: list[int] = []
    for start in range(0, count, 200):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(start, min(count, start + 200)):
                await script(args=[user_id, kind], client=pipe)
            seqs.extend(int(s) for s in await pipe.execute())
    return seqs
