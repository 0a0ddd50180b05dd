"""Reads that survive a connection that died with the old Redis.

After a Redis restart or failover, a pooled connection may still look open and
fail on first use. A read is safe to send again, so `retry_read` runs it once
more on a fresh connection (redis-py drops the failed one). Scripts that
change state are never sent twice: a lost reply does not say whether they ran.
A timeout is not retried: Redis is slow or frozen, and waiting twice as long
helps no one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger("pushskip.retry")

T = TypeVar("T")


async def retry_read(read: Callable[[], Awaitable[T]]) -> T:
    """`await read()`, once more if its connection turned out to be dead."""
    try:
        return await read()
    except RedisConnectionError as exc:
        if "No connection available" in str(exc):
            raise  # the pool is exhausted, nothing died: waiting again would double it
        logger.info("read failed on a dead connection (%r); once more on a fresh one", exc)
        return await read()
