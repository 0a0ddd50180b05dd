"""`pushskip serve --workers N`: N worker processes serving one port, and their parent.

The parent binds and listens on the port, starts the private Redis when
REDIS_URL is unset (the CLI does, before calling `run`), and holds the one
`Settings` every worker gets: the same Redis URL and the same secret (random,
drawn once by the parent, when PUSHSKIP_SECRET is unset), so a token minted by
one worker is good on all of them and an event reaches a user's sockets on
every one. The workers are spawned processes (as uvicorn's `--workers` makes
them): each is handed the listening socket and the settings, pickled over the
spawn pipe (never in argv or the environment), builds the app and runs
`PushskipServer` on that socket; the kernel gives each new connection to one
of them.

The parent restarts a worker that dies (SIGKILL, a crash), on the same socket;
one that dies within a few seconds of its start is restarted after a pause, and
one whose app fails to start (uvicorn's exit code 3) stops them all, since the
next would fail the same way. SIGTERM or SIGINT to the parent sends SIGTERM to
every worker: each closes its sockets with 1001, finishes its requests and
exits; the parent waits for them all (killing one that outlives
DRAIN_TIMEOUT_S), and only then does the CLI stop the private Redis. A worker
gets SIGTERM too if the parent itself dies.

This is a small supervisor of our own, modelled on uvicorn's `Multiprocess`
(spawned workers, a socket bound by the parent) rather than a subclass of it:
that class makes its workers run a plain `uvicorn.Server`, not
`PushskipServer`, and its constructor and worker class are internals that have
changed between uvicorn releases (projects that subclassed them broke on
upgrades), while pushskip accepts any uvicorn >= 0.30. This uses only uvicorn's
public `Config` and `Server.run(sockets=...)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing import connection
from multiprocessing.context import SpawnProcess
from types import FrameType

from uvicorn.config import STARTUP_FAILURE

from pushskip.app import create_app
from pushskip.config import Settings
from pushskip.embedded import die_with_parent
from pushskip.server import (
    GRACEFUL_SHUTDOWN_S,
    PushskipServer,
    configure_logging,
    exit_cleanly_on_signals,
    server_config,
)

logger = logging.getLogger("pushskip.supervisor")

# uvicorn's default; each worker's listen() sets it again.
BACKLOG = 2048
# A worker that dies sooner than this after its start is restarted after RESTART_PAUSE_S,
# so a worker that crashes at once does not spin the parent.
QUICK_DEATH_S = 5.0
RESTART_PAUSE_S = 1.0
# A worker closes its sockets (5 s at most), waits up to GRACEFUL_SHUTDOWN_S for its
# requests, then stops its app; past this the parent kills it.
DRAIN_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 15.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_spawn = multiprocessing.get_context("spawn")


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """What every worker is given: the parent's settings and where to say it serves."""

    settings: Settings
    host: str
    port: int
    log_level: int
    parent_pid: int


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the workers share; OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening already: while no worker is accepting (at start, or all of them
        # restarting) connections wait in the backlog instead of being refused.
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def worker_main(plan: WorkerPlan, sock: socket.socket) -> None:  # pragma: no cover - child
    """A worker process: PushskipServer over the app, on the parent's socket."""
    die_with_parent()  # a parent that dies (even SIGKILL) drains its workers
    if os.getppid() != plan.parent_pid:
        return  # it died before that took effect
    exit_cleanly_on_signals()
    configure_logging(plan.log_level, workers=True)
    app = create_app(plan.settings)
    config = server_config(app, plan.settings, host=plan.host, port=plan.port)
    server = PushskipServer(config, settle_heap=True)
    server.run(sockets=[sock])


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Keeps `count` workers serving on `sock` until SIGTERM or SIGINT; see the module."""

    def __init__(self, plan: WorkerPlan, sock: socket.socket, count: int) -> None:
        self.plan = plan
        self.sock = sock
        self.count = count
        # Each running worker by its sentinel, with when it started.
        self.workers: dict[int, tuple[SpawnProcess, float]] = {}
        self.restarts_due: list[float] = []  # restarts pausing after a quick death
        self.stop_signal: int | None = None
        self.failed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a note: the loop, woken by the wakeup fd, does the rest.
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> int:
        """0 once every worker drained after SIGTERM/SIGINT; 1 when a worker's app cannot start."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_fd = signal.set_wakeup_fd(wake_w)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            for _ in range(self.count):
                self._start_worker()
            while self.stop_signal is None and not self.failed:
                self._wait(wake_r)
            self._stop_all()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        return 1 if self.failed else 0

    def _wait(self, wake_r: int) -> None:
        """Sleep until a worker exits, a signal comes or a paused restart is due; act on it."""
        timeout = None
        if self.restarts_due:
            timeout = max(0.0, min(self.restarts_due) - time.monotonic())
        ready = connection.wait([*self.workers, wake_r], timeout)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 64):
                    pass
        for sentinel in ready:
            if sentinel in self.workers:
                self._reap(sentinel)
        now = time.monotonic()
        for due in [d for d in self.restarts_due if d <= now]:
            self.restarts_due.remove(due)
            if self.stop_signal is None and not self.failed:
                self._start_worker()

    def _start_worker(self) -> None:
        process = _spawn.Process(
            target=worker_main,
            args=(self.plan, self.sock),
            name="pushskip-worker",
            # multiprocessing's own exit handler SIGTERMs a daemon worker should the
            # parent ever leave by an unexpected exception.
            daemon=True,
        )
        process.start()
        self.workers[process.sentinel] = (process, time.monotonic())
        logger.info("started worker %d", process.pid)

    def _reap(self, sentinel: int) -> None:
        process, started = self.workers.pop(sentinel)
        process.join()
        code = process.exitcode
        if self.stop_signal is not None:
            return
        if code == STARTUP_FAILURE:
            logger.error("worker %d could not start the app: stopping every worker", process.pid)
            self.failed = True
            return
        if time.monotonic() - started < QUICK_DEATH_S:
            logger.warning(
                "worker %d %s %.1f s after its start; starting another in %g s",
                process.pid, describe_exit(code), time.monotonic() - started, RESTART_PAUSE_S,
            )
            self.restarts_due.append(time.monotonic() + RESTART_PAUSE_S)
            return
        logger.warning("worker %d %s; starting another", process.pid, describe_exit(code))
        self._start_worker()

    def _stop_all(self) -> None:
        """SIGTERM every worker and wait for them to drain; kill the ones that do not."""
        processes = [process for process, _ in self.workers.values()]
        if self.stop_signal is not None:
            logger.info(
                "%s: draining %d workers",
                signal.Signals(self.stop_signal).name, len(processes),
            )
        for process in processes:
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.error(
                    "worker %d did not drain within %g s: killing it", process.pid, DRAIN_TIMEOUT_S
                )
                process.kill()
                process.join()
        self.workers.clear()
        logger.info("every worker has exited")


def run(settings: Settings, sock: socket.socket, *, host: str, port: int, workers: int) -> int:
    """Serve on `sock` (from `listen`) with `workers` processes until SIGTERM or SIGINT."""
    plan = WorkerPlan(
        settings=settings,
        host=host,
        port=port,
        log_level=logging.getLogger().getEffectiveLevel(),
        parent_pid=os.getpid(),
    )
    return Supervisor(plan, sock, workers).run()
