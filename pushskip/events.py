"""Per-user event logs: reading them, and the event shape.

Events are written only by the Lua scripts (`lua/lib.lua: append_event`),
which append to the log and PUBLISH the same JSON in one step. Here we read
the log back, for `GET events?after=` and for WebSocket replay, always with
the log's epoch: seqs mean something only within one epoch. The hub and
the WebSocket pass events on as the JSON text Redis holds (`RawEvent`), so
an event is encoded once, in Lua, however many sockets it reaches.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from pushskip import keys
from pushskip.redisform import Commands
from pushskip.retry import retry_read

Event = dict[str, Any]

# One read returns at most this many events; callers ask again from the last seq.
READ_LIMIT = 500
# The largest seq a client may name (JavaScript's safe integers end here).
MAX_SEQ = 2**53
# Epochs the server makes are ~16 digits; anything much longer is not one.
MAX_EPOCH = 64


def parse_seq(raw: str | None) -> int | None:
    """A client's `after=`: None when absent or empty; ValueError unless 0..MAX_SEQ."""
    if raw is None or raw == "":
        return None
    # isascii: str.isdigit() also takes "²" and other digits int() refuses or
    # reads; the length bound keeps int() under Python's digit limit.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) > MAX_SEQ:
        raise ValueError("after must be a whole number >= 0")
    return int(raw)


def parse_epoch(raw: str | None) -> str | None:
    """A client's `epoch=`: None when absent or empty; ValueError unless a short token."""
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_EPOCH or not (raw.isascii() and raw.isalnum()):
        raise ValueError("epoch must be the epoch string the server sent")
    return raw


def epoch_of(stored: str | None) -> str | None:
    """The epoch in an epoch key's value (`<epoch>|<replication id>`, lua/lib.lua)."""
    return stored.partition("|")[0] if stored else None


class RawEvent(NamedTuple):
    """An event as the JSON text Redis holds, with the seq and epoch read from it."""

    seq: int
    text: str
    epoch: str | None


def parse_raw(text: str) -> RawEvent:
    """The seq and epoch of an event's JSON text; ValueError when it has no seq."""
    event = json.loads(text)
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        raise ValueError("event without an integer seq")
    epoch = event.get("epoch")
    return RawEvent(event["seq"], text, epoch if isinstance(epoch, str) else None)


@dataclasses.dataclass(frozen=True, slots=True)
class LogRead:
    """Part of a user's log, read at one moment with its last seq and its epoch."""

    events: list[RawEvent]
    last_seq: int
    # None: the user has no log now (never had one, it expired, or Redis lost it).
    epoch: str | None

    def decoded(self) -> list[Event]:
        return [json.loads(e.text) for e in self.events]


async def read_log(
    redis: Commands, user_id: str, after: int, *, limit: int = READ_LIMIT
) -> LogRead:
    """Events of `user_id` with seq > after (at most `limit`), oldest first."""

    async def read() -> LogRead:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xrange(keys.event_log(user_id), f"{after + 1}-0", "+", count=limit)
            pipe.get(keys.event_seq(user_id))
            pipe.get(keys.event_epoch(user_id))
            entries, last, stored = await pipe.execute()
        epoch = epoch_of(stored)
        found = [
            RawEvent(int(entry_id.partition("-")[0]), fields["e"], epoch)
            for entry_id, fields in entries
        ]
        return LogRead(found, int(last or 0), epoch)

    return await retry_read(read)
