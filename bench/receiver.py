"""`python -m bench.receiver --port N`: the app backend's webhook endpoint, for the bench.

Answers every POST with 204 at once and counts what it got (`GET /count`): the
bench measures what sending webhooks costs pushskip, not what a receiver does
with them, and this receiver shares the machine's cores with the app under
test, so it is as cheap as it can be (an asyncio protocol and httptools' parser,
~20 us a request). Signatures are checked by the tests (`tests/test_webhooks.py`),
not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import httptools

NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.ids: set[bytes] = set()


class Receiver(asyncio.Protocol):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.webhook_id: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_message_complete(self) -> None:
        if self.parser.get_method() == b"POST":
            self.counts.requests += 1
            if self.webhook_id is not None:
                self.counts.ids.add(self.webhook_id)
            self.transport.write(NO_CONTENT)
        else:
            body = json.dumps(
                {"requests": self.counts.requests, "unique": len(self.counts.ids)}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.webhook_id = None
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int) -> None:
    counts = Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(counts), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
