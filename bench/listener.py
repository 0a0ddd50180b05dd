"""The receiving side of the benchmark, in its own process (`python -m bench.listener`).

It holds the partners' WebSockets, the polling clients, and a Redis
subscriber for the floor, so receiving never waits behind the HTTP load the
driver sends (they still share the machine's cores with the server). Each
partner-skipped event it receives is recorded as (user index, roomName,
CLOCK_MONOTONIC ns); the driver records the same key and the time just before
its request was sent, and the parent joins the two. CLOCK_MONOTONIC is one
clock for every process on the machine, so the difference is the latency.

Protocol: one JSON command per line on stdin `{"id": n, "cmd": ..., ...}`,
one JSON reply per line on stdout `{"id": n, ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import time
from typing import Any

from bench.httpc import HttpConn, HttpError, split_base
from pushskip.heap import HEAP

MARK = "partner-skipped"
CONNECT_TIMEOUT_S = 30.0


class Listener:
    def __init__(self) -> None:
        self.records: list[tuple[int, str, int]] = []
        self.messages = 0
        self.polls = 0
        self.poll_errors = 0
        self.poll_rtt_ns = 0
        self.poll_error_kinds: dict[str, int] = {}
        self.unexpected_closes: dict[str, int] = {}
        self.sockets: dict[int, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.pollers: dict[int, asyncio.Task[None]] = {}
        self.poll_conns: dict[int, HttpConn] = {}
        self.pubsubs: list[Any] = []
        self.stopping = False
        # Skips sent over a socket (`ws_skip`), by request id: (reply time ns, reply) once read.
        self.replies: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}

    # ---- WebSockets -------------------------------------------------------------------------
    async def ws_connect(
        self, url: str, users: list[list[Any]], concurrency: int = 100
    ) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        self.stopping = False
        sem = asyncio.Semaphore(concurrency)
        failed: list[str] = []
        t0 = time.monotonic()

        async def one(idx: int, query: str) -> None:
            async with sem:
                try:
                    ws = await asyncio.wait_for(
                        connect(
                            f"{url}?{query}",
                            compression=None,
                            ping_interval=None,  # idle means idle: only the server pings
                            proxy=None,
                            max_queue=None,
                            open_timeout=CONNECT_TIMEOUT_S,
                            close_timeout=2,
                        ),
                        CONNECT_TIMEOUT_S,
                    )
                    hello = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S)
                except Exception as exc:
                    failed.append(repr(exc)[:200])
                    return
                self.messages += 1
                if MARK in hello:  # pragma: no cover - hello never carries events
                    self._record(idx, hello, time.monotonic_ns())
                self.sockets[idx] = ws
                task = asyncio.create_task(self._read(idx, ws))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        await asyncio.gather(*(one(int(i), str(q)) for i, q in users))
        return {
            "connected": len(users) - len(failed),
            "failed": len(failed),
            "errors": failed[:5],
            "elapsed_s": time.monotonic() - t0,
        }

    def _record(self, idx: int, text: str | bytes, t_ns: int) -> None:
        event = json.loads(text)
        if isinstance(event, dict) and event.get("type") == MARK:
            self.records.append((idx, str(event.get("roomName")), t_ns))

    def _reply(self, text: str | bytes, t_ns: int) -> None:
        reply = json.loads(text)
        if isinstance(reply, dict) and reply.get("type") == "reply":
            fut = self.replies.pop(str(reply.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result((t_ns, reply))

    async def ws_skip(self, idx: int, rid: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Skip over socket `idx` (`{"type":"skip","requeue":false}`); when it was sent and
        when its reply came, both CLOCK_MONOTONIC ns, and whether it skipped."""
        ws = self.sockets.get(idx)
        if ws is None:
            return {"ok": False, "error": "no such socket"}
        fut = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        text = json.dumps({"type": "skip", "id": rid, "requeue": False})
        t_send = time.monotonic_ns()
        try:
            await ws.send(text)
            t_resp, reply = await asyncio.wait_for(fut, timeout_s)
        except Exception as exc:
            self.replies.pop(rid, None)
            return {"ok": False, "error": repr(exc)[:120]}
        body = reply.get("body") or {}
        return {
            "ok": reply.get("status") == 200 and body.get("skipped") is True,
            "error": None if reply.get("status") == 200 else f"{reply.get('status')} {body}",
            "t_send_ns": t_send,
            "t_resp_ns": t_resp,
        }

    async def _read(self, idx: int, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                t_ns = time.monotonic_ns()
                self.messages += 1
                if MARK in message:
                    self._record(idx, message, t_ns)
                elif '"reply"' in message:
                    self._reply(message, t_ns)
        except ConnectionClosed:
            pass
        finally:
            self.sockets.pop(idx, None)
            if not self.stopping:
                code = str(getattr(ws, "close_code", None))
                self.unexpected_closes[code] = self.unexpected_closes.get(code, 0) + 1

    # ---- polling ---------------------------------------------------------------------------
    async def poll_start(
        self, base: str, users: list[list[Any]], interval_s: float
    ) -> dict[str, Any]:
        self.stopping = False
        host, port = split_base(base)
        failed: list[str] = []
        sem = asyncio.Semaphore(100)

        async def open_one(idx: int) -> HttpConn | None:
            async with sem:
                conn = HttpConn(host, port)
                try:
                    await conn.connect()
                except OSError as exc:
                    failed.append(repr(exc)[:200])
                    return None
                return conn

        conns = await asyncio.gather(*(open_one(int(i)) for i, _ in users))
        for (idx, token), conn in zip(users, conns, strict=True):
            if conn is None:
                continue
            self.poll_conns[int(idx)] = conn
            task = asyncio.create_task(self._poll(int(idx), str(token), conn, interval_s))
            self.pollers[int(idx)] = task
        return {"started": len(users) - len(failed), "failed": len(failed), "errors": failed[:5]}

    async def _poll(self, idx: int, token: str, conn: HttpConn, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        last = 0
        # A random phase, as real clients have: a skip lands anywhere in the interval.
        next_at = loop.time() + random.uniform(0, interval_s)
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += interval_s
            now = loop.time()
            # A slow answer: poll again at once, but do not burst to catch up.
            next_at = max(next_at, now)
            raw = conn.build("GET", f"/api/simple-matching/events?after={last}", token=token)
            t0 = time.monotonic_ns()
            try:
                status, body = await conn.send(raw)
            except HttpError as exc:
                self.poll_errors += 1
                self._poll_error(str(exc)[:80])
                await asyncio.sleep(interval_s)
                continue
            t_ns = time.monotonic_ns()
            self.polls += 1
            self.poll_rtt_ns += t_ns - t0
            if status != 200:
                self.poll_errors += 1
                self._poll_error(f"{status} {body[:80]!r}")
                continue
            reply = json.loads(body)
            for event in reply["events"]:
                self.messages += 1
                if event.get("type") == MARK:
                    self.records.append((idx, str(event.get("roomName")), t_ns))
            last = max(last, int(reply.get("lastSeq") or 0))

    def _poll_error(self, kind: str) -> None:
        if len(self.poll_error_kinds) < 20 or kind in self.poll_error_kinds:
            self.poll_error_kinds[kind] = self.poll_error_kinds.get(kind, 0) + 1

    # ---- Redis pub/sub (floor) -------------------------------------------------------------
    async def redis_sub(self, url: str, channel: str) -> dict[str, Any]:
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        # Wait for the confirmation so no message is published before we listen.
        while True:
            msg = await pubsub.get_message(timeout=5)
            if msg is None or msg["type"] == "subscribe":
                break

        async def read() -> None:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                t_ns = time.monotonic_ns()
                self.messages += 1
                idx, _, room = msg["data"].decode().partition(" ")
                self.records.append((int(idx), room, t_ns))

        task = asyncio.create_task(read())
        self.tasks.add(task)
        self.pubsubs.append((client, pubsub, task))
        return {"subscribed": channel}

    # ---- control ---------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "poll_error_kinds": dict(self.poll_error_kinds),
            "poll_rtt_ms_mean": (self.poll_rtt_ns / self.polls / 1e6) if self.polls else None,
            "sockets": len(self.sockets),
            "pollers": len(self.pollers),
            "unexpected_closes": dict(self.unexpected_closes),
        }

    def flush(self) -> dict[str, Any]:
        records, self.records = self.records, []
        return {"records": records, **self.counters()}

    async def close_all(self) -> dict[str, Any]:
        self.stopping = True
        closed = len(self.sockets)
        for task in list(self.pollers.values()):
            task.cancel()
        for task in list(self.pollers.values()):
            with contextlib.suppress(BaseException):
                await task
        for conn in self.poll_conns.values():
            conn.close()
        pollers = len(self.pollers)
        self.pollers.clear()
        self.poll_conns.clear()
        sockets = list(self.sockets.values())
        sem = asyncio.Semaphore(200)

        async def close(ws: Any) -> None:
            async with sem:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)

        await asyncio.gather(*(close(ws) for ws in sockets))
        for client, pubsub, task in self.pubsubs:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        self.pubsubs.clear()
        for task in list(self.tasks):
            task.cancel()
        self.sockets.clear()
        self.polls = self.poll_errors = self.poll_rtt_ns = self.messages = 0
        self.poll_error_kinds = {}
        self.unexpected_closes = {}
        return {"closed_sockets": closed, "stopped_pollers": pollers}


async def amain() -> None:
    listener = Listener()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    running: set[asyncio.Task[None]] = set()

    def reply(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")
        out.flush()

    async def handle(msg: dict[str, Any]) -> None:
        cid, cmd = msg.pop("id"), msg.pop("cmd")
        try:
            if cmd == "ws_connect":
                result = await listener.ws_connect(**msg)
            elif cmd == "poll_start":
                result = await listener.poll_start(**msg)
            elif cmd == "redis_sub":
                result = await listener.redis_sub(**msg)
            elif cmd == "ws_skip":
                result = await listener.ws_skip(**msg)
                result["done"] = result.pop("ok")
            elif cmd == "flush":
                result = listener.flush()
            elif cmd == "counters":
                result = listener.counters()
            elif cmd == "close_all":
                result = await listener.close_all()
            elif cmd == "ping":
                result = {"pid": os.getpid()}
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply({"id": cid, "ok": True, **result})
        except Exception as exc:
            reply({"id": cid, "ok": False, "error": repr(exc)})

    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            await listener.close_all()
            reply({"id": msg["id"], "ok": True})
            break
        task = asyncio.create_task(handle(msg))
        running.add(task)
        task.add_done_callback(running.discard)


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The listener timestamps what arrives: a long collection here (its 1,000 sockets,
    # its records) would show up as the app's latency. The app's own heap policy.
    HEAP.settle()
    asyncio.run(amain())


if __name__ == "__main__":
    main()
