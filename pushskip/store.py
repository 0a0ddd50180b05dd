"""The only module that changes matching state in Redis.

Every state change is one Lua script (see `scripts.py`), whose JSON reply is
decoded into a dataclass of `replies.py`; reads that must see one consistent
moment use MGET or a MULTI/EXEC pipeline and return a dataclass of their own.
`api.py` and `ws.py` turn these into API.md's payloads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushskip import keys
from pushskip.events import epoch_of
from pushskip.metrics import Metrics
from pushskip.redisform import Commands
from pushskip.replies import (
    BanReply,
    CheckDisconnectReply,
    EnqueueReply,
    LeaveReply,
    Match,
    ServerEndReply,
    SkipReply,
    State,
    StatsReply,
    UserInfoReply,
)
from pushskip.retry import retry_read
from pushskip.scripts import Scripts

logger = logging.getLogger("pushskip.store")


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


@dataclasses.dataclass(frozen=True, slots=True)
class UserStatus:
    state: State
    match: Match | None
    last_seq: int
    # The epoch of the user's event log; None while they have none.
    epoch: str | None
    # The app's backend has banned the user (server API) for now.
    banned: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LeftBehind:
    """The seed's skip notification, while it still concerns `me` (not re-paired since)."""

    skipped_by: str | None
    room: str | None
    timestamp: int | None


def enqueue_args(
    me: str,
    *,
    stale_s: int,
    address: str,
    max_waiting: int,
    rate: float = 0,
    present_ms: int = 0,
) -> list[str]:
    """ARGV of lua/enqueue.lua (also for callers that pipeline it themselves); `rate`:
    enqueues the address may make a second (0: no limit); `present_ms`: the grace to
    mark `me` present with in the same step (0: not)."""
    return [
        me,
        new_room_name(),
        str(stale_s * 1000),
        address,
        str(max_waiting),
        repr(rate),
        str(present_ms),
    ]


def skip_args(
    me: str,
    *,
    requeue: bool,
    stale_s: int,
    cooldown_s: int,
    address: str,
    max_waiting: int,
    rate: float = 0,
    present_ms: int = 0,
) -> list[str]:
    """ARGV of lua/skip.lua (`present_ms`: as for enqueue_args)."""
    return [
        me,
        "1" if requeue else "0",
        new_room_name(),
        str(stale_s * 1000),
        str(cooldown_s),
        address,
        str(max_waiting),
        repr(rate),
        str(present_ms),
    ]


def leave_args(me: str, *, cooldown_s: int) -> list[str]:
    """ARGV of lua/leave.lua."""
    return [me, str(cooldown_s)]


class Store:
    def __init__(
        self,
        redis: Commands,
        *,
        stale_s: int,
        cooldown_s: int,
        retention_s: int,
        max_waiting_per_address: int,
        metrics: Metrics | None = None,
        outbox: frozenset[str] = frozenset(),
        on_change: Callable[[], None] | None = None,
        grace_s: float = 5.0,
        enqueue_rate: float = 0,
    ) -> None:
        """`outbox`: the outbox targets (outbox.py) whose entries the steps record;
        `on_change`: called after a step that made or ended a match (it recorded some);
        `grace_s`: how long a user who left their media room has to come back;
        `enqueue_rate`: enqueues one client address may make a second (0: no limit)."""
        self.grace_ms = grace_s * 1000
        self.enqueue_rate = enqueue_rate
        self.redis = redis
        self.metrics = metrics
        self.scripts = Scripts.register(redis, retention_ms=retention_s * 1000, outbox=outbox)
        self._on_change = on_change
        self.stale_s = stale_s
        self.cooldown_s = cooldown_s
        self.max_waiting = max_waiting_per_address

    async def enqueue(self, me: str, *, address: str, present_ms: int = 0) -> EnqueueReply:
        """Queue `me` (who connects from `address`) and pair the earliest waiting users;
        `present_ms`: a claimed presence touch to write in the same step (Presence)."""
        args = enqueue_args(
            me,
            stale_s=self.stale_s,
            address=address,
            max_waiting=self.max_waiting,
            rate=self.enqueue_rate,
            present_ms=present_ms,
        )
        reply = EnqueueReply.decode(await self.scripts.enqueue(*args))
        if reply.status == "matched":
            self._changed()
        return reply

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    async def skip(
        self, me: str, *, requeue: bool, address: str, present_ms: int = 0
    ) -> SkipReply:
        started_ms = int(time.time() * 1000)
        t0 = time.perf_counter()
        args = skip_args(
            me,
            requeue=requeue,
            stale_s=self.stale_s,
            cooldown_s=self.cooldown_s,
            address=address,
            max_waiting=self.max_waiting,
            rate=self.enqueue_rate,
            present_ms=present_ms,
        )
        raw = await self.scripts.skip(*args)
        script_s = time.perf_counter() - t0
        reply = SkipReply.decode(raw)
        if reply.skipped:
            self._changed()
            if self.metrics is not None:
                self.metrics.skip_publish_seconds.observe(script_s)
            # The seed's "Monitoring" line: when the skip started, who, which room.
            logger.info(
                "skip skipStart=%d userId=%s otherUserId=%s roomName=%s requeue=%s "
                "status=%s scriptMs=%.3f",
                started_ms, me, reply.partner, reply.room, requeue, reply.status, script_s * 1000,
            )
        return reply

    async def leave(self, me: str) -> LeaveReply:
        reply = LeaveReply.decode(
            await self.scripts.leave(*leave_args(me, cooldown_s=self.cooldown_s))
        )
        if reply.left_match:
            self._changed()
        return reply

    async def end_match(self, user: str) -> ServerEndReply:
        """The app's backend ends `user`'s match: both get partner-left, reason removed."""
        reply = ServerEndReply.decode(
            await self.scripts.server_end_match(user, str(self.cooldown_s))
        )
        if reply.ended:
            self._changed()
        return reply

    async def ban(self, user: str, seconds: int) -> BanReply:
        """Ban `user` for `seconds`: out of the queue and their match, sockets told to close."""
        reply = BanReply.decode(
            await self.scripts.ban(user, str(seconds * 1000), str(self.cooldown_s))
        )
        if reply.ended:
            self._changed()
        return reply

    async def media_presence(self, kind: str, user: str, room: str) -> bool:
        """A media server saw `user` leave or join `room` (lua/media_presence.lua); whether it
        concerned their current match."""
        raw = await self.scripts.media_presence(kind, user, room, str(int(self.grace_ms)))
        return bool(json.loads(raw).get("changed"))

    async def unban(self, user: str) -> bool:
        """Lift `user`'s ban; whether there was one."""
        return bool(await self.redis.delete(keys.banned(user)))

    async def user_info(self, user: str) -> UserInfoReply:
        return UserInfoReply.decode(await retry_read(lambda: self.scripts.user_info(user)))

    async def stats(self) -> StatsReply:
        return StatsReply.decode(
            await retry_read(lambda: self.scripts.stats(str(self.stale_s * 1000)))
        )

    async def status(self, me: str) -> UserStatus:
        """Where `me` stands, and their log's last seq and epoch, at one moment."""

        async def read() -> UserStatus:
            raw, queued, last, stored_epoch, banned = await self.scripts.status.call_raw(me)
            epoch = epoch_of(stored_epoch)
            state: State = "matched" if raw else ("waiting" if queued else "idle")
            match = match_view(raw, me) if raw else None
            return UserStatus(state, match, int(last or 0), epoch, bool(banned))

        return await retry_read(read)

    async def touch(self, me: str) -> None:
        """Mark a waiting user as alive, so their queue entry does not go stale."""
        await self.scripts.touch(me)

    async def allow_session(self, address: str, per_minute: int) -> bool:
        """Count a new session against `address`; False (nothing counted) past the limit.

        With Redis away the session is allowed: a session is a signed token that
        needs no Redis, and every route that uses it answers 503 meanwhile."""
        try:
            return await self.scripts.session_rate(address, str(per_minute)) == "1"
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("session rate not counted (Redis away: %r)", exc)
            return True

    async def check_disconnect(self, me: str) -> str | None:
        """Consume `me`'s disconnect flags; the reason to disconnect, or None."""
        return CheckDisconnectReply.decode(await self.scripts.check_disconnect(me)).reason

    async def check_room_valid(self, me: str, room: str) -> str | None:
        """Why `room` is no longer valid for `me`, or None when it is."""
        deleted, in_progress, forced, raw = await retry_read(
            lambda: self.redis.mget(
                keys.ROOM_DELETED + room,
                keys.SKIP_IN_PROGRESS + me,
                keys.FORCE_DISCONNECT + me,
                keys.match(me),
            )
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

    async def left_behind(self, me: str) -> LeftBehind | None:
        """The skip that left `me` alone, or None (none, or re-paired since: an old room)."""
        raw_match, raw_note = await retry_read(
            lambda: self.redis.mget(keys.match(me), keys.SKIP_NOTIFICATION + me)
        )
        if raw_note is None or raw_match is not None:
            return None
        note = json.loads(raw_note)
        return LeftBehind(
            note.get("skippedBy"), note.get("roomName"), int(note.get("timestamp") or 0)
        )
