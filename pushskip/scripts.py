"""The Lua scripts that make each state change one atomic Redis step.

Each script in `lua/` is prefixed with the key names from `keys.py` and the
helpers in `lua/lib.lua`, then registered once per client with
`register_script`, which sends EVALSHA and reloads the script itself after a
NOSCRIPT reply (a restarted Redis).
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from pushskip import keys

SCRIPT_NAMES = ("enqueue", "skip", "leave", "check_disconnect", "touch")
# Logs and counters live a day past the longest token, so a seq never restarts
# while a client could still hold a token that remembers it.
LOG_KEEP_MS = 25 * 3600 * 1000


@cache
def source(name: str) -> str:
    """The full text of a script: constants, shared helpers, then its body."""
    folder = resources.files("pushskip") / "lua"
    lib = (folder / "lib.lua").read_text()
    body = (folder / f"{name}.lua").read_text()
    return keys.lua_constants(LOG_KEEP_MS) + lib + body


@dataclasses.dataclass(frozen=True)
class Scripts:
    enqueue: AsyncScript
    skip: AsyncScript
    leave: AsyncScript
    check_disconnect: AsyncScript
    touch: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        return cls(**{name: redis.register_script(source(name)) for name in SCRIPT_NAMES})
