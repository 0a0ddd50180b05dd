"""The whole HTTP flow against a real server and a real Redis."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from pushskip import keys
from tests.helpers import new_user


async def test_two_users_match_symmetrically(http: httpx.AsyncClient, redis: Redis) -> None:
    """The second enqueue pairs both users; both match: keys hold the same room."""
    a, b = await new_user(http), await new_user(http)
    assert (await a.call("enqueue"))["status"] == "waiting"
    got = await b.call("enqueue")
    assert got["status"] == "matched"
    match = got["match"]
    assert {match["user1"], match["user2"]} == {a.id, b.id}
    assert match["partnerId"] == a.id
    status_a = await a.call("status")
    assert status_a["state"] == "matched"
    assert status_a["match"]["roomName"] == match["roomName"]
    assert status_a["match"]["partnerId"] == b.id
    assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 2


async def test_skip_sets_seed_flags_and_notifies_partner(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """A skip sets every seed flag with its seed TTL, ends the match, logs partner-skipped."""
    a, b = await new_user(http), await new_user(http)
    await a.call("enqueue")
    room = (await b.call("enqueue"))["match"]["roomName"]
    got = await a.call("skip", {"requeue": False})
    assert got == {"success": True, "skipped": True, "roomName": room, "status": "idle",
                   "match": None}
    expected_ttls = {
        f"pre-skip:{a.id}": 30,
        f"skip-in-progress:{a.id}": 60,
        f"skip-in-progress:{b.id}": 60,
        f"force-disconnect:{b.id}": 300,
        f"room-deleted:{room}": 300,
        f"skip-notification:{b.id}": 300,
    }
    for key, ttl in expected_ttls.items():
        assert ttl - 2 <= await redis.ttl(key) <= ttl, key
    assert await redis.exists(keys.match(a.id), keys.match(b.id)) == 0
    events = (await b.call("events?after=0"))["events"]
    assert [e["type"] for e in events] == ["matched", "partner-skipped"]
    assert [e["seq"] for e in events] == [1, 2]
    assert events[1]["roomName"] == room and events[1]["skippedBy"] == a.id
    assert (await b.call("check-disconnect"))["shouldDisconnect"] is True
    assert (await b.call("check-disconnect"))["shouldDisconnect"] is False
    left = await b.call("left-behind-status")
    assert left["leftBehind"] is True and left["skippedBy"] == a.id and left["roomName"] == room
    again = await a.call("skip")
    assert again == {"success": True, "skipped": False, "message": "No active match"}


async def test_leave_notifies_partner(http: httpx.AsyncClient) -> None:
    """Leaving a match ends it for both and logs partner-left for the partner."""
    a, b = await new_user(http), await new_user(http)
    await a.call("enqueue")
    room = (await b.call("enqueue"))["match"]["roomName"]
    await a.call("leave")
    assert (await a.call("status"))["state"] == "idle"
    assert (await b.call("status"))["state"] == "idle"
    events = (await b.call("events?after=1"))["events"]
    assert [(e["type"], e["roomName"]) for e in events] == [("partner-left", room)]
