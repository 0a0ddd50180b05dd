"""Lua scripts: errors name their file and line; replies are decoded by name, in one place."""

from __future__ import annotations

from importlib import resources

import pytest
from redis.asyncio import Redis

from pushskip import scripts
from pushskip.auth import new_user_id
from pushskip.replies import (
    CheckDisconnectReply,
    EnqueueReply,
    LeaveReply,
    ReplyError,
    SkipReply,
)
from pushskip.scripts import Script, ScriptError, Scripts
from pushskip.store import new_room_name

RETENTION_MS = 60_000


def line_of(file: str, needle: str) -> int:
    text = (resources.files("pushskip") / "lua" / file).read_text()
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("name", scripts.SCRIPT_NAMES)
def test_source_maps_each_line_back_to_its_file(name: str) -> None:
    """Every line of a script's full text maps to the same line of the file it came from."""
    source = scripts.source(name, retention_ms=RETENTION_MS)
    lib = (resources.files("pushskip") / "lua" / "lib.lua").read_text().splitlines()
    body = (resources.files("pushskip") / "lua" / f"{name}.lua").read_text().splitlines()
    files = {"lib.lua": lib, f"{name}.lua": body}
    for number, line in enumerate(source.text.splitlines(), 1):
        file, _, at = source.where(number).rpartition(":")
        if file in files:
            assert files[file][int(at) - 1] == line, (number, file, at)
        else:
            assert file.startswith("keys.py") and line.startswith("local "), (number, line)


async def test_a_failing_script_names_the_lua_file_and_line(redis: Redis) -> None:
    """A Lua error inside lib.lua, raised through a real Redis, says `lib.lua:<line>`."""
    enqueue = Script(redis, "enqueue", retention_ms=RETENTION_MS)
    await enqueue(new_user_id(), new_room_name(), "60000", "::1", "9", "0")  # someone waiting
    with pytest.raises(ScriptError) as info:
        # A stale_ms that is not a number fails where lib.lua compares against it.
        await enqueue(new_user_id(), new_room_name(), "not-a-number", "::1", "9", "0")
    expected = line_of("lib.lua", "seen < now - stale_ms")
    assert f"lib.lua:{expected}" in str(info.value)
    assert "user_script:" not in str(info.value)


async def test_script_replies_decode_by_name(redis: Redis) -> None:
    """enqueue, skip, leave and check_disconnect answer JSON objects their dataclasses read."""
    a, b = new_user_id(), new_user_id()
    registered = Scripts.register(redis, retention_ms=RETENTION_MS)
    enqueue, skip, leave, check = (
        registered.enqueue, registered.skip, registered.leave, registered.check_disconnect
    )
    waiting = EnqueueReply.decode(await enqueue(a, new_room_name(), "60000", "::1", "9", "0"))
    assert waiting == EnqueueReply("waiting", None)
    matched = EnqueueReply.decode(await enqueue(b, "room-x", "60000", "::1", "9", "0"))
    assert matched.status == "matched" and matched.match is not None
    assert (matched.match["roomName"], matched.match["partnerId"]) == ("room-x", a)
    skipped = SkipReply.decode(await skip(b, "0", new_room_name(), "60000", "60", "::1", "9", "0"))
    assert skipped == SkipReply(True, "room-x", a, "idle", None)
    again = SkipReply.decode(await skip(b, "0", new_room_name(), "60000", "60", "::1", "9", "0"))
    assert again == SkipReply(False)
    assert CheckDisconnectReply.decode(await check(a)).reason == "force-disconnect"
    assert CheckDisconnectReply.decode(await check(a)).reason is None
    assert LeaveReply.decode(await leave(a, "60")) == LeaveReply(False)


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (EnqueueReply.decode, "not json"),
        (EnqueueReply.decode, "[1, 2]"),
        (EnqueueReply.decode, '{"status": "lost"}'),
        (EnqueueReply.decode, '{"status": "matched", "match": "room"}'),
        (SkipReply.decode, '{"skipped": true, "roomName": "r", "partnerId": "p", "status": "x"}'),
        (SkipReply.decode, '{"skipped": true}'),
        (LeaveReply.decode, '{"left": true}'),
        (CheckDisconnectReply.decode, '{"reason": 1}'),
    ],
)
def test_unexpected_replies_are_reply_errors(decode: object, raw: str) -> None:
    """A reply that does not fit its dataclass is a ReplyError, not a half-filled object."""
    with pytest.raises(ReplyError):
        decode(raw)  # type: ignore[operator]
