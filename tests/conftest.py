"""Real Redis for every test: one private server per session, flushed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from pushskip.embedded import EmbeddedRedis
from tests.helpers import make_settings, run_server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
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
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
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
