"""Connection churn runs in turns (churn.py): new connections' first reads and peers' close
frames take at most a share of each loop turn, in arrival order, and none is lost."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets
from redis.asyncio import Redis

from pushskip import keys
from pushskip.churn import ChurnTurns, Step, is_close_frame
from tests.conftest import EmbeddedRedis
from tests.helpers import make_settings, new_user, run_server
from tests.test_ws import recv_json, ws_url


class Transport:
    def __init__(self) -> None:
        self.paused = False
        self.closing = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


class Turns:
    """Counts the loop's turns: one tick per turn, scheduled as churn's own turn is."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_steps_within_the_share_run_at_once() -> None:
    churn = ChurnTurns(budget_s=60.0)
    ran: list[bytes] = []
    transports = [Transport() for _ in range(5)]
    ran_now = [
        churn.run(transport, ran.append, b"%d" % i)  # type: ignore[arg-type]
        for i, transport in enumerate(transports)
    ]
    assert ran == [b"0", b"1", b"2", b"3", b"4"]
    assert ran_now == [True] * 5
    assert churn.waiting == 0
    assert not any(t.paused for t in transports)


async def test_past_the_share_steps_wait_their_turn_in_order() -> None:
    """Each step outlasts the share: one runs per turn, in arrival order (those that come
    while others wait go behind them), each connection unread until its step runs."""
    churn = ChurnTurns(budget_s=0.001)
    turns = Turns()
    ran: list[tuple[bytes, int, bool]] = []
    transports: dict[bytes, Transport] = {}

    def slow_step(data: bytes) -> None:
        ran.append((data, turns.count, transports[data].paused))
        time.sleep(0.002)

    def arrive(name: bytes) -> bool:
        transports[name] = Transport()
        return churn.run(transports[name], slow_step, name)  # type: ignore[arg-type]

    try:
        assert [arrive(name) for name in (b"a", b"b", b"c")] == [True, False, False]
        assert [r[0] for r in ran] == [b"a"]
        assert transports[b"b"].paused and transports[b"c"].paused
        assert churn.waiting == 2
        await asyncio.sleep(0)
        arrive(b"d")  # a share is free this turn, but b and c came first
        assert churn.waiting >= 2
        while churn.waiting:
            await asyncio.sleep(0)
    finally:
        turns.stop()
    assert [r[0] for r in ran] == [b"a", b"b", b"c", b"d"]
    turn_of = [r[1] for r in ran]
    assert len(set(turn_of)) == 4, f"one step per turn, got turns {turn_of}"
    assert turn_of == sorted(turn_of)
    assert not any(paused for _, _, paused in ran), "a step runs with its connection read again"
    assert not any(t.paused for t in transports.values())


async def test_a_step_whose_connection_closed_while_waiting_is_dropped() -> None:
    churn = ChurnTurns(budget_s=0.0)
    ran: list[bytes] = []
    first, gone, last = Transport(), Transport(), Transport()
    churn.run(first, ran.append, b"first")  # type: ignore[arg-type]
    churn.run(gone, ran.append, b"gone")  # type: ignore[arg-type]
    churn.run(last, ran.append, b"last")  # type: ignore[arg-type]
    gone.closing = True
    while churn.waiting:
        await asyncio.sleep(0)
    assert ran == [b"first", b"last"]


async def test_a_waiting_step_that_raises_drops_its_connection_and_the_turn_goes_on() -> None:
    """As a transport does when its protocol fails on a read: the connection is dropped
    and the error reported; the steps behind it still run."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        churn = ChurnTurns(budget_s=60.0)
        ran: list[bytes] = []

        def step(data: bytes) -> None:
            if data == b"bad":
                raise ValueError("unparsable")
            ran.append(data)

        first, bad, last = Transport(), Transport(), Transport()
        churn.run(first, step, b"first")  # type: ignore[arg-type]
        churn.budget_s = 0.0  # the next two wait
        churn.run(bad, step, b"bad")  # type: ignore[arg-type]
        churn.run(last, step, b"last")  # type: ignore[arg-type]
        churn.budget_s = 60.0
        while churn.waiting:
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert ran == [b"first", b"last"]
    assert bad.closing and not first.closing and not last.closing
    assert [type(c.get("exception")) for c in reported] == [ValueError]


def test_close_frames_are_told_from_other_frames() -> None:
    masked_close = bytes([0x88, 0x82, 1, 2, 3, 4, 0x02, 0xEA])
    assert is_close_frame(masked_close)
    assert not is_close_frame(bytes([0x81, 0x85, 1, 2, 3, 4]) + b"hello")  # text
    assert not is_close_frame(bytes([0x89, 0x80, 1, 2, 3, 4]))  # ping
    assert not is_close_frame(b"\x88")  # not a whole frame head


async def test_with_no_share_every_socket_still_opens_and_closes(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Churn with no share at all (one step per turn): 40 sockets opening at once all get
    their hello; closed at once, each close is answered and each leaves the hub (with one
    socket per user allowed, every user opens again)."""
    settings = make_settings(redis_server.url, max_sockets_per_user=1)
    async with (
        run_server(settings, churn=ChurnTurns(budget_s=0.0)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        users = [await new_user(http) for _ in range(40)]
        for _ in range(2):
            sockets = await asyncio.gather(*(websockets.connect(ws_url(base, u)) for u in users))
            hellos = await asyncio.gather(*(recv_json(ws) for ws in sockets))
            assert [h["userId"] for h in hellos] == [u.id for u in users]
            await asyncio.gather(*(ws.close() for ws in sockets))
            # The server answered each close frame with its own (the handshake completed).
            closes = [ws.protocol.close_rcvd for ws in sockets]
            assert [c.code if c else None for c in closes] == [1000] * len(sockets)


async def test_with_no_share_a_first_read_is_taken_whole(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A first read that waited its turn loses nothing: two pipelined requests in it are
    both answered, and a request whose head comes in two reads is answered once whole."""
    settings = make_settings(redis_server.url)
    async with run_server(settings, churn=ChurnTurns(budget_s=0.0)) as base:
        host, port = base.removeprefix("http://").split(":")
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

        async def exchange(*parts: bytes, answers: int) -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                for part in parts:
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                got = b""
                while got.count(b"HTTP/1.1 200 OK") < answers:
                    chunk = await asyncio.wait_for(reader.read(65536), 5)
                    if not chunk:
                        break
                    got += chunk
                return got
            finally:
                writer.close()

        openers = [exchange(request + request, answers=2) for _ in range(10)]
        halves = [exchange(request[:20], request[20:], answers=1) for _ in range(10)]
        answers = await asyncio.gather(*openers, *halves)
        assert [a.count(b"HTTP/1.1 200 OK") for a in answers] == [2] * 10 + [1] * 10


class CountedTurns(ChurnTurns):
    __slots__ = ("steps",)

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def run(self, transport: asyncio.Transport, step: Step, data: bytes) -> bool:
        self.steps += 1
        return super().run(transport, step, data)


async def test_only_first_reads_and_close_frames_are_churn(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Later requests on a kept-alive connection, and a socket's messages, are read at once:
    churn is each connection's first read, and a close frame."""
    churn = CountedTurns()
    async with (
        run_server(make_settings(redis_server.url), churn=churn) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        user = await new_user(http)
        for _ in range(5):
            assert (await http.get("/healthz")).status_code == 200
        assert churn.steps == 1
        async with websockets.connect(ws_url(base, user)) as ws:
            assert (await recv_json(ws))["type"] == "hello"
            for _ in range(3):
                await ws.send('{"type":"ping"}')
                assert (await recv_json(ws))["type"] == "pong"
            assert churn.steps == 2
        assert churn.steps == 3


class HeldCloses(ChurnTurns):
    """Churn that holds every close frame until the test lets it go."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[asyncio.Transport, Step, bytes]] = []

    def run(self, transport: asyncio.Transport, step: Step, data: bytes) -> bool:
        if not is_close_frame(data):
            return super().run(transport, step, data)
        transport.pause_reading()
        self.held.append((transport, step, data))
        return False

    def release(self) -> None:
        for transport, step, data in self.held:
            transport.resume_reading()
            step(data)


async def test_a_close_frame_that_waited_completes_a_close_the_server_sent_meanwhile(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """The peer's close frame waits its turn; meanwhile the server closes the socket itself
    (a ban). When the frame's turn comes it completes the closing handshake: the
    connection is closed then, not left to be dropped CLOSE_GRACE_S later."""
    churn = HeldCloses()
    async with (
        run_server(make_settings(redis_server.url), churn=churn) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        user = await new_user(http)
        ws = await websockets.connect(ws_url(base, user))
        assert (await recv_json(ws))["type"] == "hello"
        closing = asyncio.create_task(ws.close())
        for _ in range(500):
            if churn.held:
                break
            await asyncio.sleep(0.01)
        assert len(churn.held) == 1
        transport = churn.held[0][0]
        ban = json.dumps({"type": "close", "reason": "banned"})
        await redis.publish(keys.user_channel(user.id), ban)
        for _ in range(500):
            if transport.is_closing() or (ws.protocol.close_rcvd is not None):
                break
            await asyncio.sleep(0.01)
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4403
        assert not transport.is_closing()
        churn.release()
        assert transport.is_closing()
        await closing


class SlowTurns(ChurnTurns):
    """Churn whose every step takes 150 ms, one step a turn."""

    def __init__(self) -> None:
        super().__init__(budget_s=0.0)

    def run(self, transport: asyncio.Transport, step: Step, data: bytes) -> bool:
        def slow(data: bytes) -> None:
            time.sleep(0.15)
            step(data)

        return super().run(transport, slow, data)


async def test_the_wait_for_a_turn_does_not_count_against_the_header_timeout(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """12 complete requests arrive at once, each first read taking 150 ms: the last waits
    ~1.7 s for its turn, longer than the 1 s header timeout, and is answered all the same."""
    settings = make_settings(redis_server.url, header_timeout_s=1.0)
    async with run_server(settings, churn=SlowTurns()) as base:
        host, port = base.removeprefix("http://").split(":")

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                return await asyncio.wait_for(reader.read(20), 10)
            finally:
                writer.close()

        answers = await asyncio.gather(*(one() for _ in range(12)))
    assert [a.startswith(b"HTTP/1.1 200") for a in answers] == [True] * 12


async def test_a_first_read_does_not_give_a_slow_client_a_new_header_timeout(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """A client that waits 1.5 s and then sends a part of its request head is still
    closed when its 2 s are up, not 2 s after its first bytes."""
    settings = make_settings(redis_server.url, header_timeout_s=2.0)
    async with run_server(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        opened = time.monotonic()
        try:
            await asyncio.sleep(1.5)
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            assert await asyncio.wait_for(reader.read(100), 10) == b""
            closed_after = time.monotonic() - opened
        finally:
            writer.close()
    assert closed_after < 2.9, f"closed {closed_after:.2f} s after it opened"
