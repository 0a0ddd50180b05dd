"""The only module that changes matching state in Redis.

Every state change is one Lua script (see `scripts.py`); reads that must see
one consistent moment use MGET or a MULTI/EXEC pipeline. Methods return plain
dicts shaped as API.md's payloads, so `api.py` and `ws.py` only add
`success` and send them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from typing import Any, Literal

from redis.asyncio import Redis

from pushskip import keys
from pushskip.scripts import Scripts

logger = logging.getLogger("pushskip.store")

Match = dict[str, Any]
State = Literal["idle", "waiting", "matched"]


def new_room_name() -> str:
    return "room-" + secrets.token_hex(8)


def match_view(stored: str | dict[str, Any], me: str) -> Match:
    """A stored match as `me` sees it (adds partnerId)."""
    m = json.loads(stored) if isinstance(stored, str) else stored
    partner = m["user2"] if m["user1"] == me else m["user1"]
    return {
        "roomName": m["roomName"],
        "user1": m["user1"],
        "user2": m["user2"],
        "partnerId": partner,
        "matchedAt": int(m.get("matchedAt") or 0),
    }


@dataclasses.dataclass(frozen=True)
class SkipResult:
    skipped: bool
    room: str | None = None
    partner: str | None = None
    status: State = "idle"
    match: Match | None = None
    script_ms: float = 0.0


class Store:
    def __init__(self, redis: Redis, *, stale_s: int, cooldown_s: int) -> None:
        self.redis = redis
        self.scripts = Scripts.register(redis)
        self._stale_ms = str(stale_s * 1000)
        self._cooldown_s = str(cooldown_s)

    async def enqueue(self, me: str) -> tuple[State, Match | None]:
        reply = await self.scripts.enqueue(args=[me, new_room_name(), self._stale_ms])
        if reply[0] == "matched":
            return "matched", json.loads(reply[1])
        return "waiting", None

    async def skip(self, me: str, *, requeue: bool) -> SkipResult:
        started_ms = int(time.time() * 1000)
        t0 = time.perf_counter()
        reply = await self.scripts.skip(
            args=[me, "1" if requeue else "0", new_room_name(), self._stale_ms, self._cooldown_s]
        )
        script_ms = (time.perf_counter() - t0) * 1000
        if int(reply[0]) == 0:
            return SkipResult(skipped=False)
        _, room, partner, status, new_match = reply
        result = SkipResult(
            skipped=True,
            room=room,
            partner=partner,
            status=status,
            match=json.loads(new_match) if new_match else None,
            script_ms=script_ms,
        )
        # The seed's "Monitoring" line: when the skip started, who, which room.
        logger.info(
            "skip skipStart=%d userId=%s otherUserId=%s roomName=%s requeue=%s "
            "status=%s scriptMs=%.3f",
            started_ms, me, partner, room, requeue, status, script_ms,
        )
        return result

    async def leave(self, me: str) -> tuple[str, str] | None:
        reply = await self.scripts.leave(args=[me])
        if int(reply[0]) == 0:
            return None
        return reply[1], reply[2]

    async def status(self, me: str) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.match(me))
            pipe.zscore(keys.QUEUE, me)
            pipe.get(keys.event_seq(me))
            raw, queued, last = await pipe.execute()
        state: State = "matched" if raw else ("waiting" if queued is not None else "idle")
        return {
            "state": state,
            "match": match_view(raw, me) if raw else None,
            "lastSeq": int(last or 0),
        }

    async def touch(self, me: str) -> None:
        """Mark a waiting user as alive, so their queue entry does not go stale."""
        await self.scripts.touch(args=[me])

    async def check_disconnect(self, me: str) -> str | None:
        """Consume `me`'s disconnect flags; the reason to disconnect, or None."""
        reply = await self.scripts.check_disconnect(args=[me])
        return reply[1] if int(reply[0]) == 1 else None

    async def check_room_valid(self, me: str, room: str) -> str | None:
        """Why `room` is no longer valid for `me`, or None when it is."""
        deleted, in_progress, forced, raw = await self.redis.mget(
            keys.ROOM_DELETED + room,
            keys.SKIP_IN_PROGRESS + me,
            keys.FORCE_DISCONNECT + me,
            keys.match(me),
        )
        # Flags hold the room they were set for: one from another room says
        # nothing about this one.
        if deleted is not None:
            return "room-deleted"
        if in_progress == room:
            return "skip-in-progress"
        if forced == room:
            return "force-disconnect"
        if raw is None or json.loads(raw)["roomName"] != room:
            return "not-in-room"
        return None

    async def left_behind(self, me: str) -> dict[str, Any]:
        raw_match, raw_note = await self.redis.mget(keys.match(me), keys.SKIP_NOTIFICATION + me)
        note = json.loads(raw_note) if raw_note else None
        # Re-paired since the skip: that notification belongs to an old room.
        if note is None or raw_match is not None:
            return {"leftBehind": False, "skippedBy": None, "roomName": None, "timestamp": None}
        return {
            "leftBehind": True,
            "skippedBy": note.get("skippedBy"),
            "roomName": note.get("roomName"),
            "timestamp": int(note.get("timestamp") or 0),
        }
