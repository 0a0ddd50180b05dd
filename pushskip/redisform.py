"""Which Redis deployment `REDIS_URL` names, and the clients pushskip uses on it.

- `redis://`, `rediss://`, `unix://`: one server.
- `redis+sentinel://host:port[,host:port...]/<master>[?db=N]`: a primary with
  replicas, found through Redis Sentinel (redis-py's asyncio `Sentinel`); the
  clients follow a failover to the new primary on their next connection.
  A password in the URL is the data nodes'; `?sentinel_password=` the
  sentinels'.
- `redis+cluster://host:port[,host:port...]`: a Redis Cluster (redis-py's
  asyncio `RedisCluster`; the other nodes are discovered). Every key carries
  the hash tag `{pushskip}` (`keys.use_tag`), so all of pushskip lives in one
  slot, and pub/sub is sharded (SSUBSCRIBE on the node that holds that slot).

Only this module, `keys.py` (the names) and `link.py` (how pub/sub is read)
know the difference; the rest of the code sees a command client and a
`PubSubSource`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from pushskip import keys

logger = logging.getLogger("pushskip.redisform")

Form = Literal["single", "sentinel", "cluster"]
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
POOL_SIZE = 64
# A cluster node's connections: redis-py's cluster client refuses a command past them
# (it does not wait for one), so a burst of requests must fit.
CLUSTER_POOL_SIZE = 512

# A command client: one server (or a Sentinel-found primary), or a cluster.
Commands = Redis | RedisCluster


class RedisUrlError(ValueError):
    """REDIS_URL names no deployment pushskip can use."""


def form_of(url: str) -> Form:
    scheme = urlsplit(url).scheme.lower()
    if scheme == SENTINEL_SCHEME:
        return "sentinel"
    if scheme == CLUSTER_SCHEME:
        return "cluster"
    return "single"


@dataclasses.dataclass(frozen=True)
class Hosts:
    """The host:port list of a sentinel or cluster URL, and the rest of it."""

    nodes: list[tuple[str, int]]
    path: str
    password: str | None
    username: str | None
    query: dict[str, str]


def hosts(url: str) -> Hosts:
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"REDIS_URL: {item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return Hosts(
        nodes,
        parts.path.strip("/"),
        unquote(password) if password else None,
        unquote(username) if username else None,
        query,
    )


def use_key_names(url: str) -> None:
    """Set this process's key names for the deployment (a hash tag in a cluster)."""
    keys.use_tag(keys.CLUSTER_TAG if form_of(url) == "cluster" else "")


class _ClosedTransportIsConnectionError:
    """A write to a connection whose server went away (a restarted cluster node, a
    failed-over primary) can fail in ways redis-py does not take for a lost connection:
    under uvloop a RuntimeError ("the handler is closed"), and in the cluster client's
    transactions a connection dropped under the write (AttributeError on its writer). They
    would reach the app as server errors. Here they are what they are: the connection is
    dropped and ConnectionError raised (a 503, or a socket waiting for Redis)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (RuntimeError, AttributeError) as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(f"connection to Redis lost: {exc}") from exc


class ClusterConnection(_ClosedTransportIsConnectionError, Connection):
    pass


class SentinelConnection(_ClosedTransportIsConnectionError, SentinelManagedConnection):
    pass


class SentinelBlockingConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel-managed pool, waiting (up to its timeout) for a free connection as the
    single-server pool does, instead of refusing the 65th command of a burst."""


class PubSubSource:
    """Where the process's pub/sub connection goes: `client()` is asked again each time the
    link (re)connects, so it may follow a failover or a slot that moved."""

    sharded = False

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def client(self) -> Redis:
        return self._client

    async def aclose(self) -> None:
        await self._client.aclose()


class ShardedPubSubSource(PubSubSource):
    """A cluster: a connection to the node that holds pushskip's slot (asked anew on each
    reconnect, after the cluster's view is refreshed), where SSUBSCRIBE goes."""

    sharded = True

    def __init__(self, cluster: RedisCluster, timeout: float) -> None:
        self._cluster = cluster
        self._timeout = timeout
        self._node: tuple[str, int] | None = None
        self._current: Redis | None = None

    async def client(self) -> Redis:
        try:
            if self._node is None:
                await self._cluster.initialize()
            else:  # a reconnect: the slot may have moved
                await self._cluster.nodes_manager.initialize()
            node = self._cluster.get_node_from_key(keys.TAG)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"cluster topology unavailable: {exc}") from exc
        if node is None:
            raise RedisConnectionError(f"no cluster node holds the slot of {keys.TAG}")
        where = (node.host, int(node.port))
        if self._current is None or where != self._node:
            if self._current is not None:
                await self._current.aclose()
            kwargs = self._cluster.connection_kwargs
            self._current = Redis.from_pool(
                ConnectionPool(
                    connection_class=ClusterConnection,
                    host=where[0],
                    port=where[1],
                    password=kwargs.get("password"),
                    username=kwargs.get("username"),
                    decode_responses=True,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            )
            self._node = where
            logger.info("sharded pub/sub on %s:%d", *where)
        return self._current

    async def aclose(self) -> None:
        if self._current is not None:
            await self._current.aclose()


def clients(url: str, timeout: float) -> tuple[Commands, PubSubSource]:
    """The command client and the pub/sub source for REDIS_URL."""
    form = form_of(url)
    if form == "cluster":
        found = hosts(url)
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(h, p, connection_class=ClusterConnection) for h, p in found.nodes
            ],
            password=found.password,
            username=found.username,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            max_connections=CLUSTER_POOL_SIZE,
        )
        # The nodes it discovers get their connections of this class too.
        cluster.nodes_manager.connection_kwargs["connection_class"] = ClusterConnection
        return cluster, ShardedPubSubSource(cluster, timeout)
    if form == "sentinel":
        found = hosts(url)
        if not found.path:
            raise RedisUrlError("REDIS_URL: redis+sentinel://host:port,.../<master name>")
        db = int(found.query.get("db", "0"))
        sentinel = Sentinel(
            found.nodes,
            socket_timeout=timeout,
            sentinel_kwargs={
                "socket_timeout": timeout,
                "password": found.query.get("sentinel_password"),
            },
        )
        common: dict[str, Any] = {
            "password": found.password,
            "username": found.username,
            "db": db,
            "decode_responses": True,
            "socket_connect_timeout": timeout,
            "connection_class": SentinelConnection,
        }
        commands = sentinel.master_for(
            found.path,
            connection_pool_class=SentinelBlockingConnectionPool,
            socket_timeout=timeout,
            max_connections=POOL_SIZE,
            timeout=timeout,
            **common,
        )
        pubsub = sentinel.master_for(found.path, retry=Retry(NoBackoff(), 0), **common)
        return commands, PubSubSource(pubsub)
    # A burst waits (up to the timeout) for one of a bounded set of connections;
    # redis-py's default pool fails the 101st concurrent command.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    commands = Redis.from_pool(pool)
    # Its connections never retry by themselves: redis-py's pub/sub would otherwise
    # reconnect and resubscribe silently, and what was published meanwhile would be lost.
    pubsub = Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    return commands, PubSubSource(pubsub)
