"""Per-user event logs: reading them, and the event shape.

Events are written only by the Lua scripts (`lua/lib.lua: append_event`),
which append to the log and PUBLISH the same JSON in one step. Here we read
the log back, for `GET events?after=` and for WebSocket replay. The hub and
the WebSocket pass events on as the JSON text Redis holds (`RawEvent`), so
an event is encoded once, in Lua, however many sockets it reaches.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from redis.asyncio import Redis

from pushskip import keys

Event = dict[str, Any]

# One read returns at most this many events; callers ask again from the last seq.
READ_LIMIT = 500
# The largest seq a client may name (JavaScript's safe integers end here).
MAX_SEQ = 2**53


def parse_seq(raw: str | None) -> int | None:
    """A client's `after=`: None when absent or empty; ValueError unless 0..MAX_SEQ."""
    if raw is None or raw == "":
        return None
    # isascii: str.isdigit() also takes "²" and other digits int() refuses or
    # reads; the length bound keeps int() under Python's digit limit.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) > MAX_SEQ:
        raise ValueError("after must be a whole number >= 0")
    return int(raw)


class RawEvent(NamedTuple):
    seq: int
    text: str


def parse_raw(text: str) -> RawEvent:
    """The seq of an event's JSON text; ValueError when it has none."""
    event = json.loads(text)
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        raise ValueError("event without an integer seq")
    return RawEvent(event["seq"], text)


async def read_raw_after(
    redis: Redis, user_id: str, after: int, *, limit: int = READ_LIMIT
) -> tuple[list[RawEvent], int]:
    """Events of `user_id` with seq > after, oldest first, and the user's last seq."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xrange(keys.event_log(user_id), f"{after + 1}-0", "+", count=limit)
        pipe.get(keys.event_seq(user_id))
        entries, last = await pipe.execute()
    found = [RawEvent(int(entry_id.partition("-")[0]), fields["e"]) for entry_id, fields in entries]
    return found, int(last or 0)


async def read_after(
    redis: Redis, user_id: str, after: int, *, limit: int = READ_LIMIT
) -> tuple[list[Event], int]:
    """As `read_raw_after`, decoded."""
    found, last = await read_raw_after(redis, user_id, after, limit=limit)
    return [json.loads(e.text) for e in found], last
