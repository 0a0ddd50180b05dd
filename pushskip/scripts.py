"""The Lua scripts that make each state change one atomic Redis step.

Each script in `lua/` is sent as one text: the key names from `keys.py`, the
helpers in `lua/lib.lua`, then its own body. It is registered once per client
with `register_script`, which sends EVALSHA and reloads the script itself
after a NOSCRIPT reply (a restarted Redis). A script answers with one JSON
object, decoded by `replies.py`.

Redis names a failing line by its number in the whole text
(`user_script:142`); `ScriptError` names the file and line it came from
(`lib.lua:23`, `skip.lua:4`) instead.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from pushskip import keys

SCRIPT_NAMES = (
    "enqueue",
    "skip",
    "leave",
    "check_disconnect",
    "touch",
    "session_rate",
    "server_end_match",
    "ban",
    "user_info",
    "stats",
    "media_presence",
    "status",
)
NO_OUTBOX: frozenset[str] = frozenset()
_LINE = re.compile(r"user_script:(\d+)")


class ScriptError(ResponseError):
    """A script failed inside Redis; the message names the Lua file and line."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A script's full text and where each of its parts starts."""

    name: str
    text: str
    # (first line in `text`, file name), in order.
    parts: tuple[tuple[int, str], ...]

    def where(self, line: int) -> str:
        """`file:line` for a line number of the full text."""
        start, file = self.parts[0]
        for part_start, part_file in self.parts:
            if line >= part_start:
                start, file = part_start, part_file
        return f"{file}:{line - start + 1}"

    def explain(self, message: str) -> str:
        """A Redis error message with each `user_script:N` replaced by `file:line`."""
        return _LINE.sub(lambda m: self.where(int(m.group(1))), message)


def _lua(file: str) -> str:
    return (resources.files("pushskip") / "lua" / file).read_text()


def source(name: str, *, retention_ms: int, outbox: frozenset[str] = NO_OUTBOX) -> Source:
    """The full text of a script: constants, shared helpers, then lua/<name>.lua."""
    return _source(name, retention_ms, outbox, keys.TAG)


@cache
def _source(name: str, retention_ms: int, outbox: frozenset[str], tag: str) -> Source:
    return compose(f"{name}.lua", _lua(f"{name}.lua"), retention_ms=retention_ms, outbox=outbox)


def compose(
    file: str, body: str, *, retention_ms: int, outbox: frozenset[str] = NO_OUTBOX
) -> Source:
    """Constants and shared helpers, then `body` (named `file` in error messages). The
    steps record outbox entries for the targets in `outbox` (outbox.py).

    In a cluster (keys with a hash tag) the text starts with `#!lua`: Redis then holds
    the script to the slot of its one declared key, the tag (see Script)."""
    pieces = [
        ("keys.py (generated constants)", keys.lua_constants(retention_ms, outbox)),
        ("lib.lua", _lua("lib.lua")),
        (file, body if body.endswith("\n") else body + "\n"),
    ]
    if keys.TAG:
        pieces.insert(0, ("(shebang)", "#!lua\n"))
    parts: list[tuple[int, str]] = []
    line = 1
    for file, piece in pieces:
        if not piece.endswith("\n"):
            raise ValueError(f"{file} must end with a newline")
        parts.append((line, file))
        line += piece.count("\n")
    return Source(file, "".join(piece for _, piece in pieces), tuple(parts))


class Script:
    """One registered script: call it with its ARGV, get its JSON reply text."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        name: str,
        *,
        retention_ms: int,
        outbox: frozenset[str] = NO_OUTBOX,
    ) -> None:
        self.source = source(name, retention_ms=retention_ms, outbox=outbox)
        self._script = redis.register_script(self.source.text)
        # In a cluster a script declares one key, the hash tag every key of it carries:
        # the client sends it to the node that holds that slot.
        self._keys = [keys.TAG] if keys.TAG else []

    def __repr__(self) -> str:
        return f"Script({self.source.name!r})"

    async def __call__(self, *args: str) -> str:
        return str(await self.call_raw(*args))

    async def call_raw(self, *args: str) -> Any:
        """The script's reply as Redis gave it (a list, a number...), not as text."""
        try:
            return await self._script(keys=self._keys, args=list(args))
        except ResponseError as exc:
            raise ScriptError(self.source.explain(str(exc))) from exc


@dataclasses.dataclass(frozen=True)
class Scripts:
    enqueue: Script
    skip: Script
    leave: Script
    check_disconnect: Script
    touch: Script
    session_rate: Script
    server_end_match: Script
    ban: Script
    user_info: Script
    stats: Script
    media_presence: Script
    status: Script

    @classmethod
    def register(
        cls,
        redis: Redis | RedisCluster,
        *,
        retention_ms: int,
        outbox: frozenset[str] = NO_OUTBOX,
    ) -> Scripts:
        """Every script, with event logs kept `retention_ms` after their last event, recording
        outbox entries for the targets in `outbox`."""
        return cls(
            **{
                name: Script(redis, name, retention_ms=retention_ms, outbox=outbox)
                for name in SCRIPT_NAMES
            }
        )
