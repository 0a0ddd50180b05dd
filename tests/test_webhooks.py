"""Webhooks to the app's backend, end to end: every match and every ending reaches a real
receiver that checks each signature with the Standard Webhooks reference package, in order
per room, once per webhook-id, also across a receiver outage and a SIGKILLed process."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from pushskip import keys
from pushskip.embedded import EmbeddedRedis
from tests.app_backend import WEBHOOK_SECRET, Received, WebhookReceiver, describe
from tests.helpers import User, app_process, make_settings, new_user, run_server

API_KEY = "server-api-key-for-tests"
GRACE_S = 2.0


def webhook_settings(redis_url: str, receiver: WebhookReceiver, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "webhook_url": receiver.url,
        "webhook_secret": WEBHOOK_SECRET,
        "outbox_backoff_max_s": 0.5,
        "api_key": API_KEY,
        "presence_grace_s": GRACE_S,
        "presence_sweep_s": 0.2,
    }
    values.update(overrides)
    return make_settings(redis_url, **values)


async def match(a: User, b: User) -> str:
    assert (await a.call("enqueue"))["status"] == "waiting"
    got = await b.call("enqueue")
    assert got["status"] == "matched", got
    return str(got["match"]["roomName"])


def check_room(events: list[Received], users: set[str], reason: str, ended_by: str | None) -> None:
    """A room's webhooks: match.created first, then one match.ended with `reason`."""
    assert [e.type for e in events] == ["match.created", "match.ended"], describe(events)
    created, ended = events
    assert set(created.data["users"]) == users and created.data["matchedAt"] > 0
    assert ended.data["users"] == created.data["users"]
    assert ended.data["reason"] == reason and ended.data["endedBy"] == ended_by
    assert created.id.endswith("_created") and ended.id.endswith("_ended")
    assert created.timestamp.endswith("Z") and ended.timestamp >= created.timestamp


async def test_200_matches_and_every_kind_of_ending_arrive_signed_and_in_order(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """200 matches, ended by a skip, a leave, a vanished user, the server's end-match or a
    ban: the receiver verifies every signature and gets match.created then match.ended (with
    the right reason and endedBy) for each room, each webhook-id once."""
    receiver = WebhookReceiver()
    settings = webhook_settings(redis_server.url, receiver)
    expected: dict[str, tuple[set[str], str, str | None]] = {}
    async with (
        receiver.running(),
        run_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        server = {"Authorization": f"apikey {API_KEY}"}
        for i in range(200):
            a, b = await new_user(http), await new_user(http)
            room = await match(a, b)
            kind = i % 5
            if kind == 0:
                assert (await b.call("skip", {"requeue": False}))["skipped"]
                expected[room] = ({a.id, b.id}, "skipped", b.id)
            elif kind == 1:
                await a.call("leave")
                expected[room] = ({a.id, b.id}, "left", a.id)
            elif kind == 2:
                # Neither comes back: after the grace the sweep ends it, naming one of them.
                expected[room] = ({a.id, b.id}, "disconnected", None)
            elif kind == 3:
                r = await http.post("/api/server/end-match", json={"userId": a.id}, headers=server)
                assert r.json()["ended"] is True
                expected[room] = ({a.id, b.id}, "removed", None)
            else:
                r = await http.post(
                    "/api/server/ban", json={"userId": b.id, "seconds": 60}, headers=server
                )
                assert r.json()["ended"] is True
                expected[room] = ({a.id, b.id}, "removed", None)
        got = await receiver.wait_for(400, timeout=60)
    assert receiver.rejected == 0
    assert len(receiver.received) == 400, "a webhook-id arrived twice with the receiver up"
    rooms = receiver.by_room()
    assert set(rooms) == set(expected)
    for room, (users, reason, ended_by) in expected.items():
        events = rooms[room]
        if reason == "disconnected":
            ended_by = events[-1].data["endedBy"]
            assert ended_by in users
        check_room(events, users, reason, ended_by)
    assert len(got) == 400
    # Nothing is left to deliver.
    assert await redis.zcard(keys.outbox(keys.WEBHOOK_TARGET, "recorded")) == 0


async def test_every_event_survives_a_receiver_outage_and_a_sigkilled_process(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The receiver is down while two processes make and end matches; one process is
    SIGKILLed right after a skip. When the receiver is back, every match.created and
    match.ended arrives, once per webhook-id, created before ended in each room."""
    receiver = WebhookReceiver()
    env = {
        "PUSHSKIP_WEBHOOK_URL": receiver.url,
        "PUSHSKIP_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PUSHSKIP_OUTBOX_BACKOFF_MAX_S": "0.5",
        "PUSHSKIP_OUTBOX_LEASE_S": "2",
        "PUSHSKIP_PRESENCE_GRACE_S": "600",
    }
    rooms_made: set[str] = set()
    rooms_ended: set[str] = set()

    async def play(http: httpx.AsyncClient, skips: int) -> None:
        for _ in range(skips):
            a, b = await new_user(http), await new_user(http)
            room = await match(a, b)
            rooms_made.add(room)
            got = await a.call("skip", {"requeue": True})
            rooms_ended.add(room)
            c = await new_user(http)
            again = await c.call("enqueue")  # a is waiting again: c meets a
            assert again["status"] == "matched"
            rooms_made.add(again["match"]["roomName"])
            assert got["skipped"] is True

    with (
        app_process(redis_server.url, **env) as (url_a, proc_a),
        app_process(redis_server.url, **env) as (url_b, _),
    ):
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=10) as http_a,
            httpx.AsyncClient(base_url=url_b, timeout=10) as http_b,
        ):
            await play(http_b, 10)
            await play(http_a, 10)
            # A last skip on A, and A dies before it can deliver anything of it.
            a, b = await new_user(http_a), await new_user(http_a)
            room = await match(a, b)
            rooms_made.add(room)
            assert (await b.call("skip", {"requeue": False}))["skipped"] is True
            proc_a.send_signal(signal.SIGKILL)
            rooms_ended.add(room)
            await asyncio.sleep(1.5)  # the receiver stays down a little longer
            async with receiver.running():
                expected = len(rooms_made) + len(rooms_ended)
                got = await receiver.wait_for(expected, timeout=60)
                await asyncio.sleep(0.5)
    assert receiver.rejected == 0
    by_room = receiver.by_room()
    assert set(by_room) == rooms_made
    for room, events in by_room.items():
        kinds = [e.type for e in events]
        if room in rooms_ended:
            assert kinds == ["match.created", "match.ended"], describe(events)
        else:
            assert kinds == ["match.created"], describe(events)
    assert len(got) == expected
    duplicates = len(receiver.received) - len(got)
    print(f"{expected} webhooks, {duplicates} delivered twice (at least once, ids dedupe)")


async def test_a_failing_receiver_is_retried_with_the_same_id_and_body(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A receiver answering 500 gets the same webhook-id and the same body again, signed
    afresh, until it answers 2xx; /metrics counts the retries and the delivery."""
    receiver = WebhookReceiver()
    receiver.status = 500
    attempts = receiver.attempts
    settings = webhook_settings(redis_server.url, receiver, outbox_backoff_max_s=0.2)
    async with (
        receiver.running(),
        run_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        a, b = await new_user(http), await new_user(http)
        await match(a, b)
        async with asyncio.timeout(20):
            while len(attempts) < 3:
                await asyncio.sleep(0.05)
        receiver.status = 200
        got = await receiver.wait_for(1)
        metrics = (await http.get("/metrics")).text
    (created,) = got.values()
    bodies = {body for webhook_id, body in attempts if webhook_id == created.id}
    assert len(bodies) == 1, "the body changed between attempts"
    assert json.loads(bodies.pop())["type"] == "match.created"
    assert 'pushskip_outbox_retried_total{target="webhook"}' in metrics
    retried = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('pushskip_outbox_retried_total{target="webhook"}')
        )
    )
    assert retried >= 2
    assert 'pushskip_outbox_delivered_total{target="webhook"} 1.0' in metrics


async def test_without_webhooks_nothing_is_recorded(http: httpx.AsyncClient, redis: Redis) -> None:
    """With PUSHSKIP_WEBHOOK_URL unset the Lua steps record no outbox entry."""
    a, b = await new_user(http), await new_user(http)
    await match(a, b)
    await a.call("skip", {"requeue": False})
    assert [k async for k in redis.scan_iter(match=keys.OUTBOX + "*")] == []


def test_webhook_url_and_secret_come_together() -> None:
    """Setting only one of PUSHSKIP_WEBHOOK_URL and PUSHSKIP_WEBHOOK_SECRET is a config
    error, and the secret must be whsec_ base64."""
    from pushskip.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="together"):
        Settings.from_env({"PUSHSKIP_WEBHOOK_URL": "http://127.0.0.1:1/hooks"})
    with pytest.raises(ConfigError, match="PUSHSKIP_WEBHOOK_SECRET"):
        Settings.from_env({"PUSHSKIP_WEBHOOK_SECRET": "whsec_!!!not base64!!!"})
    with pytest.raises(ConfigError, match="PUSHSKIP_WEBHOOK_URL"):
        Settings.from_env(
            {"PUSHSKIP_WEBHOOK_URL": "ftp://x", "PUSHSKIP_WEBHOOK_SECRET": WEBHOOK_SECRET}
        )


def readme_backend_example() -> str:
    """The Python code block of the README's "Use it from your app"."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Use it from your app") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


async def test_the_readme_backend_example_works_against_pushskip(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's backend example, run as written: its tokens get its users in, and it
    verifies pushskip's webhooks and drops a repeat."""
    from tests.app_backend import APP_JWT_SECRET

    monkeypatch.setenv("PUSHSKIP_JWT_SECRET", APP_JWT_SECRET)
    monkeypatch.setenv("PUSHSKIP_WEBHOOK_SECRET", WEBHOOK_SECRET)
    example: dict[str, Any] = {}
    exec(compile(readme_backend_example(), "README.md", "exec"), example)
    receiver = WebhookReceiver()
    settings = webhook_settings(redis_server.url, receiver, jwt_secret=APP_JWT_SECRET)
    async with (
        receiver.running(),
        run_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        a = User(http, "readme-a", example["pushskip_token"]("readme-a"))
        b = User(http, "readme-b", example["pushskip_token"]("readme-b"))
        room = await match(a, b)
        await receiver.wait_for(1)
    (_, body), headers = receiver.attempts[0], receiver.headers[0]
    event = example["on_webhook"](body, headers)
    assert event["type"] == "match.created" and event["data"]["roomName"] == room
    assert example["on_webhook"](body, headers) is None  # the repeat
    with pytest.raises(Exception, match="signature"):
        example["on_webhook"](body.replace(b"readme-a", b"readme-x"), headers)
