"""Real Redis for every test: one private server per session, flushed per test.

`PUSHSKIP_TEST_REDIS=sentinel scripts/test` runs the whole suite with the session's
Redis behind Sentinel instead (a primary, a replica, three sentinels: the apps get a
`redis+sentinel://` URL, the tests' own client talks to the primary); tests that need
to stop, freeze or proxy a server of their own still get one (`own_redis`). The cluster
form changes every key name (a hash tag), which many tests read directly: it runs in
`tests/test_deployments.py` (`scripts/test -m deployments`), on every run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bench.deployments import SentinelDeployment
from pushskip.embedded import EmbeddedRedis
from tests.helpers import make_settings, run_server


class SentinelServer:
    """The session's Redis behind Sentinel, shaped as the fixture's EmbeddedRedis is used:
    `url` for the apps (through the sentinels), `direct_url` for the tests' own client."""

    def __init__(self, deployment: SentinelDeployment) -> None:
        self.deployment = deployment
        self.url = deployment.url

    @property
    def direct_url(self) -> str:
        return f"redis://127.0.0.1:{self.deployment.master_port()}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.environ.get("PUSHSKIP_TEST_REDIS", "single") == "sentinel":
        deployment = SentinelDeployment(tmp_path_factory.mktemp("sentinel")).start()
        yield SentinelServer(deployment)
        deployment.close()
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A private server for one test, for tests that stop, kill or restart it."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.close()


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[Redis]:
    client = Redis.from_url(
        getattr(redis_server, "direct_url", redis_server.url), decode_responses=True
    )
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def base_url(redis: Redis, redis_server: EmbeddedRedis) -> AsyncIterator[str]:
    async with run_server(make_settings(redis_server.url)) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
        yield client
