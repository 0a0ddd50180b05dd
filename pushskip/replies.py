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
    # limited: the client's address has too many users waiting; nothing changed.
    status: Literal["waiting", "matched", "limited"]
    match: Match | None

    @classmethod
    def decode(cls, raw: str | bytes) -> EnqueueReply:
        data = _object(raw)
        status = data.get("status")
        if status not in ("waiting", "matched", "limited"):
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
