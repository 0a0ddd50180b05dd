"""The Lua scripts' replies, decoded by name into one dataclass each.

Every script in `lua/` answers with one JSON object (`cjson.encode{...}`);
this module is the only place that reads those objects, so a field renamed in
a script fails here, by name, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, cast

Match = dict[str, Any]
State = Literal["idle", "waiting", "matched"]
STATES: tuple[State, ...] = ("idle", "waiting", "matched")


class ReplyError(ValueError):
    """A script answered with something other than what its reply type declares."""


def _object(raw: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        raise ReplyError(f"script reply is not JSON: {raw!r:.200}") from None
    if not isinstance(data, dict):
        raise ReplyError(f"script reply is not a JSON object: {raw!r:.200}")
    return data


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ReplyError(f"{name} is {value!r:.200}, not a string")
    return value


def _ended(data: dict[str, Any], flag: str) -> tuple[str, str] | None:
    """(room, partner) of the match a script ended, when `flag` says it ended one."""
    if not data.get(flag):
        return None
    return _text(data, "roomName"), _text(data, "partnerId")


def _state(value: object) -> State:
    if value not in STATES:
        raise ReplyError(f"unknown state {value!r}")
    return cast(State, value)


def _match(value: object) -> Match | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReplyError(f"match is not an object: {value!r:.200}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class EnqueueReply:
    # limited: the client's address has too many users waiting; rate-limited: it enqueues
    # too fast; banned: the app's backend banned the user. Nothing changed in these cases.
    status: Literal["waiting", "matched", "limited", "rate-limited", "banned"]
    match: Match | None

    @classmethod
    def decode(cls, raw: str | bytes) -> EnqueueReply:
        data = _object(raw)
        status = data.get("status")
        if status not in ("waiting", "matched", "limited", "rate-limited", "banned"):
            raise ReplyError(f"enqueue status is {status!r}")
        return cls(status=status, match=_match(data.get("match")))


@dataclasses.dataclass(frozen=True, slots=True)
class SkipReply:
    skipped: bool
    room: str | None = None
    partner: str | None = None
    status: State = "idle"
    match: Match | None = None

    @classmethod
    def decode(cls, raw: str | bytes) -> SkipReply:
        data = _object(raw)
        ended = _ended(data, "skipped")
        if ended is None:
            return cls(skipped=False)
        room, partner = ended
        return cls(True, room, partner, _state(data.get("status")), _match(data.get("match")))


@dataclasses.dataclass(frozen=True, slots=True)
class LeaveReply:
    left_match: bool
    room: str | None = None
    partner: str | None = None

    @classmethod
    def decode(cls, raw: str | bytes) -> LeaveReply:
        ended = _ended(_object(raw), "left")
        if ended is None:
            return cls(left_match=False)
        return cls(True, *ended)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckDisconnectReply:
    reason: str | None

    @classmethod
    def decode(cls, raw: str | bytes) -> CheckDisconnectReply:
        reason = _object(raw).get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ReplyError(f"check_disconnect reason is {reason!r}")
        return cls(reason=reason)


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReplyError(f"{name} is {value!r:.200}, not a whole number")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class ServerEndReply:
    """lua/server_end_match.lua: whether a match was ended, and which."""

    ended: bool
    room: str | None = None
    partner: str | None = None

    @classmethod
    def decode(cls, raw: str | bytes) -> ServerEndReply:
        ended = _ended(_object(raw), "ended")
        if ended is None:
            return cls(ended=False)
        return cls(True, *ended)


@dataclasses.dataclass(frozen=True, slots=True)
class BanReply:
    banned_until: int
    ended: bool
    room: str | None

    @classmethod
    def decode(cls, raw: str | bytes) -> BanReply:
        data = _object(raw)
        room = data.get("roomName")
        return cls(_int(data, "bannedUntil"), bool(data.get("ended")), room)


@dataclasses.dataclass(frozen=True, slots=True)
class UserInfoReply:
    """lua/user_info.lua: the stored match (not yet seen from the user's side)."""

    stored_match: dict[str, Any] | None
    waiting: bool
    present: bool
    banned_until: int | None

    @classmethod
    def decode(cls, raw: str | bytes) -> UserInfoReply:
        data = _object(raw)
        banned = data.get("bannedUntil")
        return cls(
            _match(data.get("match")),
            bool(data.get("waiting")),
            bool(data.get("present")),
            _int(data, "bannedUntil") if banned is not None else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StatsReply:
    waiting: int
    matched: int
    sockets: int
    processes: int

    @classmethod
    def decode(cls, raw: str | bytes) -> StatsReply:
        data = _object(raw)
        return cls(*(_int(data, n) for n in ("waiting", "matched", "sockets", "processes")))
