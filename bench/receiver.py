"""`python -m bench.receiver --port N`: the app backend's webhook endpoint, for the bench.

Answers every POST with 204 at once and counts what it got (`GET /count`): the
bench measures what sending webhooks costs pushskip, not what a receiver does
with them. Signatures are checked by the tests (`tests/test_webhooks.py`), not here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn

received = {"requests": 0, "ids": set()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        received["requests"] = int(received["requests"]) + 1  # type: ignore[call-overload]
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                received["ids"].add(value)  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = json.dumps(
        {"requests": received["requests"], "unique": len(received["ids"])}  # type: ignore[arg-type]
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
