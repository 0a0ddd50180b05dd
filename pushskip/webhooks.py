"""Webhooks to the app's backend: the outbox target that POSTs match events, signed.

Each entry of the `webhook` outbox (recorded by the Lua step that made or
ended the match, `lua/lib.lua`) becomes one POST to `PUSHSKIP_WEBHOOK_URL`,
signed as the Standard Webhooks specification says (with its reference
package): `webhook-id` (the entry's id, the same on every retry),
`webhook-timestamp` (this attempt, Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`). The body is
`{"type", "timestamp", "data"}`, rendered the same way on every attempt;
`timestamp` is when the match was made or ended (ISO 8601, UTC).

A 2xx answer is delivered; anything else, a refused connection or no answer
in `timeout_s` (5 s) is tried again later by the outbox.

The POST goes out with `httpclient.PostClient`: this runs in the event loop
that serves the skips, and it costs that loop a quarter of aiohttp's CPU per
request and a sixteenth of httpx's (measured figures in `httpclient.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from standardwebhooks.webhooks import Webhook

from pushskip import keys
from pushskip.httpclient import PostClient, PostError
from pushskip.outbox import Entry

logger = logging.getLogger("pushskip.webhooks")

TIMEOUT_S = 5.0
USER_AGENT = "pushskip-webhooks/1"


def render(entry: dict[str, Any]) -> str:
    """The body of a webhook entry: the same text on every attempt."""
    at = dt.datetime.fromtimestamp(int(entry["at"]) / 1000, tz=dt.UTC)
    body = {
        "type": entry["type"],
        "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": entry["data"],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class WebhookTarget:
    name = keys.WEBHOOK_TARGET
    concurrency = 64

    def __init__(self, url: str, secret: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self._signer = Webhook(secret)
        self._client = PostClient(
            url,
            timeout_s=timeout_s,
            max_connections=self.concurrency,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )

    def __repr__(self) -> str:
        return f"WebhookTarget(url={self.url!r})"

    def headers(self, entry_id: str, body: str, now: dt.datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt."""
        return {
            "webhook-id": entry_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(entry_id, now, body),
        }

    async def deliver(self, entry: Entry) -> bool:
        body = render(entry.data)
        headers = self.headers(entry.id, body, dt.datetime.now(tz=dt.UTC))
        try:
            status = await self._client.post(body.encode(), headers)
        except PostError as exc:
            # Debug only: the outbox says once when a target keeps failing.
            logger.debug("webhook %s (attempt %d) not delivered: %r", entry.id, entry.attempt, exc)
            return False
        if 200 <= status < 300:
            return True
        logger.debug(
            "webhook %s (attempt %d): the receiver answered %d", entry.id, entry.attempt, status
        )
        return False

    async def start(self) -> None:
        pass  # the client connects at the first delivery

    async def aclose(self) -> None:
        await self._client.aclose()
