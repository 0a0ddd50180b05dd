"""pushskip on Redis behind Sentinel and on a Redis Cluster, each started by the tests
(`bench/deployments.py`): pairing, double skip, replay, presence, events across processes,
and Redis faults (a Sentinel failover, a cluster node restart), with app processes
(`pushskip serve`) talking to them. Only the public API is used: on a cluster every key
name carries a hash tag (README, Redis deployments), which the test process does not.

Marked `deployments` (pytest -m deployments runs them alone)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets

from bench.deployments import ClusterDeployment, SentinelDeployment
from tests.helpers import User, app_process, new_user
from tests.test_ws import recv_json, ws_url

pytestmark = pytest.mark.deployments

FORMS = ["sentinel", "cluster"]
GRACE_S = 1.0


@pytest.fixture(scope="module", params=FORMS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelDeployment | ClusterDeployment]:
    directory = tmp_path_factory.mktemp(request.param)
    found: SentinelDeployment | ClusterDeployment = (
        SentinelDeployment(directory)
        if request.param == "sentinel"
        else ClusterDeployment(directory)
    )
    try:
        yield found.start()
    finally:
        found.close()


def flush(deployment: SentinelDeployment | ClusterDeployment) -> None:
    if isinstance(deployment, SentinelDeployment):
        deployment.current_primary().client().flushall()
    else:
        for node in deployment.nodes:
            with contextlib.suppress(redis.RedisError):
                node.client().flushall()


@pytest.fixture
def fresh(
    deployment: SentinelDeployment | ClusterDeployment,
) -> SentinelDeployment | ClusterDeployment:
    flush(deployment)
    return deployment


@contextlib.contextmanager
def apps(url: str, count: int = 1, **env: str) -> Iterator[list[str]]:
    """`count` app processes on the deployment; their base URLs."""
    env = {"PUSHSKIP_PRESENCE_GRACE_S": str(GRACE_S), "PUSHSKIP_PRESENCE_SWEEP_S": "0.2", **env}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(app_process(url, **env))[0] for _ in range(count)]


@contextlib.asynccontextmanager
async def client(base: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as http:
        yield http


async def status(user: User) -> dict[str, Any]:
    return await user.call("status")


# --- atomic steps ----------------------------------------------------------------------------


async def test_pairing_is_atomic_50_times(fresh: Any) -> None:
    """Ten users enqueue at once, x50: every user is in at most one match, never with
    themselves, and both users of a match name the same room and each other."""
    with apps(fresh.url) as (base,):
        async with client(base) as http:
            for _ in range(50):
                users = [await new_user(http) for _ in range(10)]
                await asyncio.gather(*(u.call("enqueue") for u in users))
                states = {u.id: await status(u) for u in users}
                for user_id, got in states.items():
                    if got["state"] != "matched":
                        continue
                    partner = got["match"]["partnerId"]
                    assert partner != user_id and partner in states
                    theirs = states[partner]
                    assert theirs["state"] == "matched"
                    assert theirs["match"]["partnerId"] == user_id
                    assert theirs["match"]["roomName"] == got["match"]["roomName"]
                assert sum(s["state"] == "matched" for s in states.values()) >= 8
                await asyncio.gather(*(u.call("leave") for u in users))


async def test_double_skip_ends_the_match_once_50_times(fresh: Any) -> None:
    """Both users skip at once, x50: one skip ends the match, the other finds none; the
    skipped user's log has at most one partner-skipped for the room; no match is left."""
    with apps(fresh.url) as (base,):
        async with client(base) as http:
            for _ in range(50):
                a, b = await new_user(http), await new_user(http)
                await a.call("enqueue")
                room = (await b.call("enqueue"))["match"]["roomName"]
                got = await asyncio.gather(
                    a.call("skip", {"requeue": False}), b.call("skip", {"requeue": False})
                )
                assert sorted(g["skipped"] for g in got) == [False, True]
                for user in (a, b):
                    assert (await status(user))["state"] == "idle"
                    events = (await user.call("events?after=0"))["events"]
                    skipped = [e for e in events if e["type"] == "partner-skipped"]
                    assert len(skipped) <= 1 and all(e["roomName"] == room for e in skipped)


# --- events across processes, replay, presence ------------------------------------------------


async def test_an_event_reaches_a_socket_on_another_process_and_replays_after_reconnect(
    fresh: Any,
) -> None:
    """A skip on process 1 reaches the partner's socket on process 2 (pub/sub: sharded in a
    cluster); a socket reconnecting with after= gets what it missed, once, in order."""
    with apps(fresh.url, count=2) as (base_1, base_2):
        async with client(base_1) as http:
            a, b = await new_user(http), await new_user(http)
            await a.call("enqueue")
            room = (await b.call("enqueue"))["match"]["roomName"]
            async with websockets.connect(ws_url(base_2, b)) as ws:
                hello = await recv_json(ws)
                assert hello["state"] == "matched" and hello["lastSeq"] == 1
                await a.call("skip", {"requeue": True})
                event = await recv_json(ws)
                assert event["type"] == "partner-skipped" and event["roomName"] == room
            c = await new_user(http)
            await c.call("enqueue")  # a is waiting again: c meets a
            await b.call("enqueue")
            d = await new_user(http)
            await d.call("enqueue")  # b meets d
            async with websockets.connect(ws_url(base_1, b, after=2)) as ws:
                assert (await recv_json(ws))["type"] == "hello"
                replayed = await recv_json(ws)
                assert (replayed["type"], replayed["seq"]) == ("matched", 3)
                assert replayed["match"]["partnerId"] == d.id


async def test_a_vanished_partner_is_declared_gone_once(fresh: Any) -> None:
    """A matched user's socket closes and they make no request: after the grace the partner
    gets partner-left (disconnected), once, from the sweep on either process."""
    with apps(fresh.url, count=2) as (base_1, base_2):
        async with client(base_1) as http:
            a, b = await new_user(http), await new_user(http)
            await a.call("enqueue")
            await b.call("enqueue")
            async with websockets.connect(ws_url(base_2, b)) as ws_b:
                await recv_json(ws_b)
                async with websockets.connect(ws_url(base_1, a)) as ws_a:
                    await recv_json(ws_a)
                event = await recv_json(ws_b, timeout=GRACE_S + 10)
                assert event["type"] == "partner-left" and event["reason"] == "disconnected"
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws_b.recv(), GRACE_S + 1)


# --- Redis faults ----------------------------------------------------------------------------


async def matched_pairs(http: httpx.AsyncClient, count: int) -> list[tuple[User, User]]:
    """`count` pairs, each matched by enqueueing its two users one after the other."""
    pairs = []
    for _ in range(count):
        a, b = await new_user(http), await new_user(http)
        await a.call("enqueue")
        await b.call("enqueue")
        pairs.append((a, b))
    return pairs


async def open_sockets(base: str, users: list[User]) -> list[Any]:
    sockets = []
    for user in users:
        ws = await websockets.connect(ws_url(base, user))
        assert (await recv_json(ws))["type"] == "hello"
        sockets.append(ws)
    return sockets


async def test_sentinel_failover_closes_no_socket_and_loses_nothing_silently(
    deployment: Any, tmp_path: Path
) -> None:
    """200 sockets on two processes, skips flowing; the primary is SIGKILLed. No socket
    closes; the service answers again within the failover time + 5 s; every event written
    after the failover arrives once, in order; a client whose events the old primary had
    (and the new one never got) is reset, never handed new events under old seqs."""
    if not isinstance(deployment, SentinelDeployment):
        pytest.skip("a Sentinel failover")
    flush(deployment)
    with apps(deployment.url, count=2, PUSHSKIP_PRESENCE_GRACE_S="600") as (base_1, base_2):
        async with client(base_1) as http:
            pairs = await matched_pairs(http, 100)
            lost_user = await new_user(http)
            sockets = await open_sockets(base_1, [a for a, _ in pairs[:50]])
            sockets += await open_sockets(base_2, [a for a, _ in pairs[50:]])
            lost_ws = await open_sockets(base_2, [lost_user])
            # Writes the replica never gets: it is frozen while lost_user's log grows.
            old_port = deployment.master_port()
            primary = deployment.current_primary()
            replica = deployment.replica if primary is deployment.primary else deployment.primary
            other = await new_user(http)
            await lost_user.call("enqueue")
            await other.call("enqueue")  # matched: lost_user's seq 1 (replicated)
            old_epoch = (await recv_json(lost_ws[0]))["epoch"]
            await asyncio.sleep(0.3)
            # The replica stops hearing from the primary: frozen, and its link cut (what the
            # primary writes from now on never reaches it).
            replica.pause()
            primary.client().client_kill_filter(_type="replica")
            await other.call("skip", {"requeue": True})  # seq 2, on the primary only
            assert (await recv_json(lost_ws[0]))["seq"] == 2
            killed_at = time.monotonic()
            primary.stop(kill=True)
            replica.resume()
            # Requests fail (503) until the failover; the service answers again within the
            # failover time (when the sentinels name the new primary) plus 5 s.
            answered_again = failed_over = None
            while answered_again is None or failed_over is None:
                now = time.monotonic() - killed_at
                if failed_over is None and await asyncio.to_thread(
                    lambda: deployment.master_port() != old_port
                ):
                    failed_over = now
                if answered_again is None and (await pairs[-1][0].get("status")).status_code == 200:
                    answered_again = now
                assert now < 60, "no failover, or the service did not answer again"
                await asyncio.sleep(0.1)
            print(
                f"sentinel failover: new primary after {failed_over:.1f} s, the service "
                f"answering again after {answered_again:.1f} s"
            )
            assert answered_again <= failed_over + 5
            # Every skipped partner gets its event once, in order.
            for _, b in pairs:
                got = await b.call("skip", {"requeue": False})
                assert got["skipped"] is True
            for ws in sockets:
                event = await recv_json(ws, timeout=15)
                if event["type"] == "hello":  # the new primary starts every log anew once
                    assert event.get("reset") is True and event["state"] == "idle", event
                    event = await recv_json(ws, timeout=15)
                assert event["type"] == "partner-skipped", event
            # The new primary never got other's skip (lost_user's seq 2): they are still
            # matched there. other skips again; that event comes after a reset, not as a
            # second "seq 2" the client would drop as one it has.
            assert (await status(lost_user))["state"] == "matched"
            assert (await other.call("skip", {"requeue": False}))["skipped"] is True
            seen = []
            while not seen or seen[-1].get("type") != "partner-skipped":
                seen.append(await recv_json(lost_ws[0], timeout=15))
            first = seen[0]
            assert first["type"] == "hello" and first.get("reset") is True, seen
            # The skip after the failover is never seq 2 of the old log (the client has one).
            assert seen[-1]["epoch"] != old_epoch, seen
            resets = [m for m in seen if m["type"] == "hello"]
            assert resets[-1]["epoch"] == seen[-1]["epoch"] and resets[-1]["state"] == "idle"
            for ws in sockets + lost_ws:
                assert ws.close_code is None  # still open
            for ws in sockets + lost_ws:
                await ws.close()


async def test_restarting_the_cluster_node_that_holds_the_slot_closes_no_socket(
    deployment: Any,
) -> None:
    """The node holding pushskip's slot is restarted (SIGKILL, back with its data): sockets
    on two processes stay open, and each gets the later events (or a reset first)."""
    if not isinstance(deployment, ClusterDeployment):
        pytest.skip("a cluster node restart")
    flush(deployment)
    with apps(deployment.url, count=2, PUSHSKIP_PRESENCE_GRACE_S="600") as (base_1, base_2):
        async with client(base_1) as http:
            pairs = await matched_pairs(http, 20)
            sockets = await open_sockets(base_1, [a for a, _ in pairs[:10]])
            sockets += await open_sockets(base_2, [a for a, _ in pairs[10:]])
            node = deployment.node_of("{pushskip}")
            await asyncio.to_thread(deployment.restart, node)
            for _, b in pairs:
                deadline = time.monotonic() + 30
                while True:
                    response = await b.post("skip", json={"requeue": False})
                    if response.status_code == 200:
                        break
                    assert time.monotonic() < deadline, response.text
                    await asyncio.sleep(0.2)
            for ws in sockets:
                event = await recv_json(ws, timeout=20)
                if event["type"] == "hello":
                    assert event.get("reset") is True
                    event = await recv_json(ws, timeout=20)
                assert event["type"] == "partner-skipped", event
                assert ws.close_code is None
            for ws in sockets:
                await ws.close()
