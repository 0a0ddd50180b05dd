"""A TCP proxy to a unix-socket Redis that can go silently deaf, for the watchdog test.

`deafen()` stops forwarding Redis -> client bytes on every pub/sub connection
(one that sent SUBSCRIBE) open at that moment, without closing anything: the
way a half-dead network path looks to a listener. Command connections and
connections made later work normally.
"""

from __future__ import annotations

import asyncio
import contextlib


class DeafeningProxy:
    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pubsub: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def deafen(self) -> None:
        for flag in self._pubsub:
            flag.set()

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
        deaf = asyncio.Event()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: bool) -> None:
            try:
                while data := await src.read(65536):
                    if not gate and b"SUBSCRIBE" in data.upper() and deaf not in self._pubsub:
                        self._pubsub.append(deaf)
                    if gate and deaf.is_set():
                        continue  # swallowed: the listener hears nothing
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, gate=False)),
            asyncio.create_task(pump(up_reader, writer, gate=True)),
        ]
        self._tasks.update(tasks)
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks)
        self._tasks.difference_update(tasks)
