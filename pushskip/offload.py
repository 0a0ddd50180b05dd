"""Work off the serving loop, in a child process: `ChildWorker`, and the outbox target
built on it (`OffloadedTarget`).

A vendor's SDK can cost the serving loop more CPU than the skip it serves:
LiveKit's room service client (aiohttp, protobuf) spends ~0.25 ms of CPU per
`DeleteRoom`, and its `AccessToken.to_jwt()` ~0.1-0.25 ms per token, two tokens per
match. A `ChildWorker` runs such calls in a child process: the serving process
sends it `(n, request)` over a socket pair and waits for `(n, ok, answer)`, which
costs it a few tens of microseconds. Each write and read wakes the other process,
which on a small virtual machine costs about as much as a token: the calls made in
one turn of the loop go out in one write, each side reads whatever has arrived at
once, and the child answers calls that need no awaiting in line, several per write.

A child that dies fails the calls it had under way (`OffloadFailed`) and is
started again at the next call, at most once per RESTART_PAUSE_S; one that does
not answer within `answer_timeout_s` is killed first. The child dies with its
parent.

`OffloadedTarget` delivers an outbox target's entries this way, in a child at a
lower CPU priority (work that is on no user's path should not queue in front of
one). Everything else stays where it was: the outbox in the serving process
claims, settles, retries, backs off, trips its breaker and counts (outbox.py);
a delivery whose child failed counts as failed and is retried after its backoff.

The child is a plain subprocess (`python -m pushskip.offload FD PID NICENESS`), not
a multiprocessing one: a `--workers` worker is a daemonic process, which
multiprocessing does not let have children. Its first messages are the parent's
`sys.path` and log level, then `factory`, a picklable callable (a class and its
arguments) that makes the `Handler` the child calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from pushskip.embedded import die_with_parent
from pushskip.outbox import Entry, Target
from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.offload")

# An outbox child's niceness: the kernel gives the serving process the CPU first.
CHILD_NICENESS = 10
# A delivery the child has not answered after this long counts as failed, and the child,
# hung, is killed and started again. Keep it above the target's own timeouts and below
# the outbox lease (an entry must not be claimed again while its try is still out).
ANSWER_TIMEOUT_S = 12.0
RESTART_PAUSE_S = 1.0
STOP_TIMEOUT_S = 5.0
READ_CHUNK = 1 << 16
# The child writes the answers of calls it handles at once after this many (or at the end
# of what it read): an answer waits for a few others, not for a whole burst.
ANSWERS_PER_WRITE = 8
_HEADER = struct.Struct("!I")


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class _Frames:
    """The messages in a stream read a chunk at a time (one read, however many messages
    arrived, instead of two awaits per message)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    async def read(self, reader: asyncio.StreamReader) -> list[bytes]:
        """The bodies of the next messages (pickled: unpickle them in order); at least one,
        IncompleteReadError at the end of the stream."""
        buffer = self._buffer
        while True:
            bodies: list[bytes] = []
            start = 0
            while len(buffer) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                end = start + _HEADER.size + size
                if len(buffer) < end:
                    break
                bodies.append(bytes(buffer[start + _HEADER.size : end]))
                start = end
            del buffer[:start]
            if bodies:
                return bodies
            data = await reader.read(READ_CHUNK)
            if not data:
                raise asyncio.IncompleteReadError(bytes(buffer), None)
            buffer += data


class _Sender:
    """Frames for one stream, written together once the loop has run what is ready (a
    burst of calls made in one turn costs one write)."""

    __slots__ = ("_out", "_writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._out: list[bytes] = []

    def send(self, message: Any) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(_frame(message))

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and not self._writer.is_closing():
            try:
                self._writer.write(b"".join(out))
            except (ConnectionError, RuntimeError) as exc:
                # Closed, the reader sees the end of the stream and fails the calls.
                logger.warning("the pipe to a child broke (%r)", exc)
                self._writer.close()


class OffloadFailed(Exception):
    """The child did not answer a call: it died, hung, could not start, or the call raised."""


class Handler(Protocol):
    """What a child runs: made there by the worker's factory."""

    async def start(self) -> None: ...

    async def handle(self, request: Any) -> Any:
        """The answer to one call (picklable). A handler whose answers need no awaiting
        may also have `handle_now(request)`, which the child then calls in line."""

    async def aclose(self) -> None: ...


class ChildWorker:
    """Calls into `factory()`'s Handler, in a child process of its own (see above)."""

    def __init__(
        self,
        factory: Callable[[], Handler],
        *,
        name: str,
        niceness: int = 0,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.factory = factory
        self.name = name
        self.niceness = niceness
        self.answer_timeout_s = answer_timeout_s
        self._closed = False
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sender: _Sender | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        # Per child: each call under way, and when it was sent (loop time).
        self._waiting: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._next = 0
        self._started_at = float("-inf")
        self._starting: asyncio.Lock | None = None
        self._ready = False
        self._start_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ChildWorker({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._process.pid if self._process is not None and self._writer else None

    @property
    def ready(self) -> bool:
        """Whether a child runs and has said it is ready (made its handler and started it)."""
        return self._ready and self._writer is not None

    async def start(self) -> None:
        """Start the child now, so the first calls do not wait for its start-up."""
        await self._child()

    def start_soon(self) -> None:
        """Start a child in the background, unless one runs or is starting."""
        if self._writer is None and not self._closed and (
            self._start_task is None or self._start_task.done()
        ):
            self._start_task = asyncio.create_task(self.start(), name=f"pushskip-{self.name}")

    async def call(self, request: Any) -> Any:
        """The child's answer to `request`; OffloadFailed when there is none."""
        writer, sender = self._writer, self._sender
        if writer is None or sender is None:
            writer = await self._child()
            sender = self._sender
        if writer is None or sender is None or writer.is_closing():
            raise OffloadFailed(f"{self.name}: no child process")
        n = self._next = self._next + 1
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        waiting = self._waiting  # this child's: a new child starts with a dict of its own
        waiting[n] = (answer, loop.time())
        try:
            sender.send((n, request))
            # Not bounded here (a timer per call costs the loop about as much as the rest
            # of the call): _watch kills a child that leaves a call unanswered.
            return await answer
        finally:
            waiting.pop(n, None)

    def _kill(self, writer: asyncio.StreamWriter) -> None:
        """End a hung child (its reader then fails what it had, and the next call
        starts another)."""
        if self._writer is writer and self._process is not None:
            self._writer, self._ready = None, False
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def _child(self) -> asyncio.StreamWriter | None:
        """The running child's pipe, starting the child if there is none (None: closed, or
        the child cannot start)."""
        if self._writer is not None:
            return self._writer
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._writer is not None or self._closed:
                return self._writer
            # A child that died at once is not restarted in a loop: wait out the pause
            # (deliveries wait with it, rather than failing and counting as attempts).
            await asyncio.sleep(max(0.0, self._started_at + RESTART_PAUSE_S - time.monotonic()))
            if self._closed:
                return None
            self._started_at = time.monotonic()
            try:
                await self._start()
            except OSError as exc:
                logger.error("%s: cannot start the child process: %r", self.name, exc)
                return None
            return self._writer

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            # -P: the child imports pushskip as installed (or from PYTHONPATH), never from
            # the working directory; it learns this process's sys.path in its first message.
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "pushskip.offload",
                str(theirs.fileno()),
                str(os.getpid()),
                str(self.niceness),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            process.kill()
            raise
        if self._closed:  # closed while it started
            writer.close()
            process.kill()
            return
        level = logging.getLogger().getEffectiveLevel()
        # Two messages: the child sets the path before it unpickles the factory.
        writer.write(_frame((list(sys.path), level)) + _frame(self.factory))
        self._process, self._writer, self._waiting, self._ready = process, writer, {}, False
        self._sender = _Sender(writer)
        self._reader_task = asyncio.create_task(
            self._read_answers(reader, writer, self._waiting),
            name=f"pushskip-{self.name}-answers",
        )
        self._watch_task = asyncio.create_task(
            self._watch(writer, self._waiting), name=f"pushskip-{self.name}-watch"
        )
        logger.info("%s: working in process %d", self.name, process.pid)

    async def _read_answers(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        waiting: dict[int, tuple[asyncio.Future[Any], float]],
    ) -> None:
        """One child's answers, to the calls in `waiting` (that child's)."""
        frames = _Frames()
        try:
            while True:
                for body in await frames.read(reader):
                    n, ok, result = pickle.loads(body)
                    if n == 0:  # the child is ready
                        self._ready = self._writer is writer
                        continue
                    answer = waiting.get(n, (None, 0.0))[0]
                    if answer is not None and not answer.done():
                        if ok:
                            answer.set_result(result)
                        else:
                            answer.set_exception(OffloadFailed(f"{self.name}: {result}"))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            logger.warning("%s: the child process is gone (%r)", self.name, exc)
        except Exception as exc:  # a frame that does not unpickle, or not as (n, ok, answer)
            logger.error("%s: unreadable answer from the child (%r); stopping it", self.name, exc)
            self._kill(writer)
        finally:
            if self._writer is writer:
                self._writer, self._ready = None, False
            writer.close()
            # Its calls under way failed.
            _fail(waiting, f"{self.name}: the child process is gone")

    async def _watch(
        self, writer: asyncio.StreamWriter, waiting: dict[int, tuple[asyncio.Future[Any], float]]
    ) -> None:
        """Kill a child that leaves a call unanswered for answer_timeout_s (its reader then
        fails the calls it had, and the next call starts another)."""
        loop = asyncio.get_running_loop()
        while not writer.is_closing():
            await asyncio.sleep(min(1.0, self.answer_timeout_s / 4))
            oldest = next(iter(waiting.values()), None)  # calls are kept in the order sent
            if oldest is not None and loop.time() - oldest[1] > self.answer_timeout_s:
                logger.warning(
                    "%s: no answer in %g s; starting the child again",
                    self.name,
                    self.answer_timeout_s,
                )
                self._kill(writer)
                return

    async def aclose(self) -> None:
        self._closed = True
        writer, process = self._writer, self._process
        self._writer, self._ready = None, False
        if self._start_task is not None:
            await cancel_and_wait([self._start_task])
        # The reader first, so the child's going is not reported as a loss.
        await cancel_and_wait([t for t in (self._reader_task, self._watch_task) if t is not None])
        if writer is not None:
            writer.close()  # the child sees the end of its stream and exits
        _fail(self._waiting, f"{self.name}: closed")
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def _fail(waiting: dict[int, tuple[asyncio.Future[Any], float]], why: str) -> None:
    for answer, _ in waiting.values():
        if not answer.done():
            answer.set_exception(OffloadFailed(why))


class OffloadedTarget:
    """A Target (outbox.py) that delivers through `factory()`'s target in a child process,
    at CHILD_NICENESS."""

    def __init__(
        self,
        factory: Callable[[], Target],
        *,
        name: str,
        concurrency: int,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.worker = ChildWorker(
            functools.partial(_TargetHandler, factory),
            name=name,
            niceness=CHILD_NICENESS,
            answer_timeout_s=answer_timeout_s,
        )

    def __repr__(self) -> str:
        return f"OffloadedTarget({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    async def start(self) -> None:
        await self.worker.start()

    async def deliver(self, entry: Entry) -> bool:
        try:
            return bool(
                await self.worker.call((entry.id, entry.data, entry.attempt, entry.recorded_ms))
            )
        except OffloadFailed:
            return False  # retried after its backoff

    async def aclose(self) -> None:
        await self.worker.aclose()


class _TargetHandler:
    """In the child: an outbox target's deliveries."""

    def __init__(self, factory: Callable[[], Target]) -> None:
        self.target = factory()

    async def start(self) -> None:
        await self.target.start()

    async def handle(self, request: tuple[str, Any, int, int]) -> bool:
        entry = Entry(*request)
        try:
            return await self.target.deliver(entry)
        except Exception:
            logger.exception("delivering %s failed", entry.id)
            return False

    async def aclose(self) -> None:
        await self.target.aclose()


def child_main() -> None:  # pragma: no cover - runs in the child (tests drive it)
    """The child: answer each call with its handler's answer. Its arguments: the file
    descriptor of its socket, its parent's pid, its niceness."""
    die_with_parent()
    if os.getppid() != int(sys.argv[2]):
        return  # the parent died before that took effect
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when
    # this one stops (it closes the socket), or its death does (SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if int(sys.argv[3]):
        with contextlib.suppress(OSError):
            os.nice(int(sys.argv[3]))
    sock = socket.socket(fileno=int(sys.argv[1]))  # its end of the socket pair
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_child_loop(sock))


async def _child_loop(sock: socket.socket) -> None:  # pragma: no cover - runs in the child
    reader, writer = await asyncio.open_connection(sock=sock)
    frames = _Frames()
    bodies: collections.deque[bytes] = collections.deque()

    async def next_body() -> bytes:
        if not bodies:
            bodies.extend(await frames.read(reader))
        return bodies.popleft()

    try:
        # The parent's sys.path first, so its factory unpickles as it does there.
        path, level = pickle.loads(await next_body())
        sys.path[:] = path
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        factory = pickle.loads(await next_body())
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    handler: Handler = factory()
    await handler.start()
    writer.write(_frame((0, True, None)))  # ready (calls are numbered from 1)
    under_way: set[asyncio.Task[None]] = set()
    # A handler that answers without awaiting anything is called in line, no task per call.
    at_once: Callable[[Any], Any] | None = getattr(handler, "handle_now", None)

    async def one(n: int, request: Any) -> None:
        try:
            answer = (n, True, await handler.handle(request))
        except Exception as exc:
            logger.exception("a call failed")
            answer = (n, False, repr(exc))
        writer.write(_frame(answer))

    try:
        while True:
            try:
                if not bodies:
                    bodies.extend(await frames.read(reader))
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the parent closed the socket, or is gone
            answers: list[bytes] = []
            while bodies:
                n, request = pickle.loads(bodies.popleft())
                if at_once is None:
                    task = asyncio.create_task(one(n, request))
                    under_way.add(task)
                    task.add_done_callback(under_way.discard)
                    continue
                try:
                    answers.append(_frame((n, True, at_once(request))))
                except Exception as exc:
                    logger.exception("a call failed")
                    answers.append(_frame((n, False, repr(exc))))
                if len(answers) >= ANSWERS_PER_WRITE:
                    writer.write(b"".join(answers))
                    answers.clear()
            if answers:
                writer.write(b"".join(answers))
    finally:
        await cancel_and_wait(under_way)
        await handler.aclose()
        writer.close()


if __name__ == "__main__":
    child_main()
