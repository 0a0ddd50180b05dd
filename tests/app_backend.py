"""A test stand-in for the app around pushskip: its backend signs JWTs for its own users,
serves its JWKS, and receives pushskip's webhooks (checked with the Standard Webhooks
reference package)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import free_port

APP_JWT_SECRET = "the-app-backend-hs256-secret-of-32-bytes-or-more"
# whsec_ + base64 of 32 bytes.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class SigningKey:
    """One of the app backend's asymmetric keys, with its JWK."""

    def __init__(self, kid: str, alg: str) -> None:
        self.kid, self.alg = kid, alg
        self.private: Any
        if alg.startswith("ES"):
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": kid, "alg": alg, "use": "sig"}

    def sign(self, sub: str, **claims: Any) -> str:
        return jwt.encode(
            app_claims(sub, **claims), self.private, self.alg, headers={"kid": self.kid}
        )


def app_claims(sub: str, **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 3600, **claims}


def hs256_token(sub: str, secret: str = APP_JWT_SECRET, **claims: Any) -> str:
    """A JWT as the app's backend signs it with the shared secret."""
    return jwt.encode(app_claims(sub, **claims), secret, "HS256")


@contextlib.asynccontextmanager
async def serve_asgi(app: Starlette, port: int | None = None) -> AsyncIterator[str]:
    """A uvicorn serving `app` in this event loop on `port` (a free one by default)."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    server.config.install_signal_handlers = False  # type: ignore[attr-defined]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class JwksServer:
    """Serves the app's JWKS; can be made slow or broken."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.delay_s = 0.0
        self.status = 200
        self.requests = 0
        self.app = Starlette(routes=[Route("/.well-known/jwks.json", self.jwks)])

    async def jwks(self, request: Request) -> Response:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return Response("broken", status_code=self.status)
        return JSONResponse({"keys": [k.jwk for k in self.keys]})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with serve_asgi(self.app) as base:
            yield base + "/.well-known/jwks.json"


class Received:
    """One webhook as the receiver got it, signature verified."""

    def __init__(self, webhook_id: str, body: dict[str, Any], at: float) -> None:
        self.id = webhook_id
        self.type: str = body["type"]
        self.data: dict[str, Any] = body["data"]
        self.timestamp: str = body["timestamp"]
        self.at = at

    def __repr__(self) -> str:
        return f"Received({self.id}, {self.type}, {self.data.get('reason')})"


class WebhookReceiver:
    """The app backend's webhook endpoint: verifies every request with the Standard
    Webhooks reference check, keeps what it accepted in arrival order."""

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self.verifier = Webhook(secret)
        self.received: list[Received] = []
        # Every request as it came: (webhook-id, raw body), whatever was answered.
        self.attempts: list[tuple[str | None, bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.rejected = 0
        self.status = 204  # what it answers once verified
        self.arrived = asyncio.Event()
        self.port = free_port()
        self.app = Starlette(routes=[Route("/hooks", self.hook, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def hook(self, request: Request) -> Response:
        raw = await request.body()
        self.attempts.append((request.headers.get("webhook-id"), raw))
        self.headers.append(dict(request.headers))
        try:
            body = self.verifier.verify(raw, dict(request.headers))
        except WebhookVerificationError:
            self.rejected += 1
            return Response("bad signature", status_code=400)
        if self.status < 300:
            self.received.append(Received(request.headers["webhook-id"], body, time.monotonic()))
            self.arrived.set()
        return Response(status_code=self.status)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookReceiver]:
        """Up on its port (the same port every time: down and up again, as a real one)."""
        async with serve_asgi(self.app, self.port):
            yield self

    def unique(self) -> dict[str, Received]:
        """The first arrival of each webhook-id."""
        first: dict[str, Received] = {}
        for item in self.received:
            first.setdefault(item.id, item)
        return first

    async def wait_for(self, count: int, timeout: float = 30.0) -> dict[str, Received]:
        """Until `count` distinct webhook-ids have arrived; the first arrival of each."""
        async with asyncio.timeout(timeout):
            while len(self.unique()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.unique()

    def by_room(self) -> dict[str, list[Received]]:
        rooms: dict[str, list[Received]] = {}
        for item in self.unique().values():
            rooms.setdefault(item.data["roomName"], []).append(item)
        return rooms


def describe(received: list[Received]) -> str:
    return json.dumps([(r.id, r.type, r.data.get("reason")) for r in received], indent=1)
