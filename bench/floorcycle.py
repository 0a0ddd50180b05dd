"""The skip cycle's floor: the side-by-side cycle on the bare stack, without pushskip.

A Starlette app under pushskip's uvicorn settings that answers what the peers'
load client (`../shared/peers/skip_latency.py --target pushskip`) drives:
`POST /api/session`, `POST /api/simple-matching/{enqueue,skip,leave}` and
`/ws?token=` (a `hello`, then `skip` actions answered by a `reply`). Each HTTP
request and socket action is one script call on Redis, as in pushskip; events
reach a socket through one redis-py pub/sub connection per process. Nothing
else: the token *is* the user id, no rate limits, no presence, no seed flags,
no event log, no epochs. It is not a product, only what uvicorn + Starlette +
redis-py cost for the cycle's requests and pushes, so pushskip's CPU per cycle
can be read against it and against the peers in one run:

    PUSHSKIP=$PWD/bench/floorcycle.sh PEERS=node ../shared/peers/side_by_side.sh 500 2000 2

(`floorcycle.sh` takes `serve --host H --port P` like `pushskip serve`, and
`REDIS_URL` from the environment.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pushskip.config import Settings
from pushskip.server import PushskipServer, server_config

QUEUE = "floorcycle:queue"
CHANNELS = "floorcycle:user:*"

# KEYS: the queue; ARGV: the user, a fresh room name. The first other user
# waiting is this one's partner; both hear `matched`.
ENQUEUE = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
local other = redis.call('LPOP', KEYS[1])
if not other then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  return {'waiting'}
end
local room = ARGV[2]
redis.call('SET', 'floorcycle:room:' .. ARGV[1], room .. ' ' .. other, 'EX', 3600)
redis.call('SET', 'floorcycle:room:' .. other, room .. ' ' .. ARGV[1], 'EX', 3600)
local event = cjson.encode({type = 'matched', roomName = room})
redis.call('PUBLISH', 'floorcycle:user:' .. other, event)
redis.call('PUBLISH', 'floorcycle:user:' .. ARGV[1], event)
return {'matched', room, other}
"""

# ARGV: the user. Ends the user's room; the partner hears `partner-skipped`.
SKIP = """
local found = redis.call('GET', 'floorcycle:room:' .. ARGV[1])
if not found then return false end
local room, other = string.match(found, '^(%S+) (%S+)$')
redis.call('DEL', 'floorcycle:room:' .. ARGV[1], 'floorcycle:room:' .. other)
local event = cjson.encode({type = 'partner-skipped', roomName = room})
redis.call('PUBLISH', 'floorcycle:user:' .. other, event)
return room
"""

LEAVE = "return redis.call('LREM', KEYS[1], 0, ARGV[1])"


def channel(user: str) -> str:
    return "floorcycle:user:" + user


class Floor:
    """The app's Redis client, its scripts and the sockets this process holds."""

    def __init__(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url)
        self.enqueue_script = self.redis.register_script(ENQUEUE)
        self.skip_script = self.redis.register_script(SKIP)
        self.leave_script = self.redis.register_script(LEAVE)
        self.sockets: dict[bytes, WebSocket] = {}
        self.pubsub = self.redis.pubsub()
        self.forwarder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.psubscribe(CHANNELS)
        self.forwarder = asyncio.create_task(self.forward(self.pubsub))

    async def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.cancel()
            # Cancelled, or ended already because Redis went away first.
            with suppress(asyncio.CancelledError, Exception):
                await self.forwarder
        await self.pubsub.aclose()
        await self.redis.aclose()

    async def forward(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message["type"] != "pmessage":
                continue
            socket = self.sockets.get(message["channel"])
            if socket is not None:
                with suppress(WebSocketDisconnect, RuntimeError):
                    await socket.send_text(message["data"].decode())

    async def enqueue(self, user: str) -> dict[str, Any]:
        reply = await self.enqueue_script(keys=[QUEUE], args=[user, secrets.token_hex(8)])
        if reply[0] == b"waiting":
            return {"status": "waiting"}
        room, other = reply[1].decode(), reply[2].decode()
        return {"status": "matched", "match": {"user1": other, "user2": user, "roomName": room}}

    async def skip(self, user: str) -> dict[str, Any]:
        room = await self.skip_script(keys=[], args=[user])
        return {"skipped": room is not None}

    async def leave(self, user: str) -> dict[str, Any]:
        await self.leave_script(keys=[QUEUE], args=[user])
        return {"success": True}


def user_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[len("Bearer ") :] if header.startswith("Bearer ") and len(header) > 7 else None


def create_floor_app(redis_url: str) -> Starlette:
    floor = Floor(redis_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await floor.start()
        yield
        await floor.stop()

    async def session(request: Request) -> Response:
        user = secrets.token_hex(8)
        return JSONResponse({"success": True, "userId": user, "token": user})

    def action(name: str) -> Any:
        async def endpoint(request: Request) -> Response:
            user = user_of(request)
            if user is None:
                return JSONResponse({"success": False, "error": "no token"}, status_code=401)
            await request.body()
            return JSONResponse(await getattr(floor, name)(user))

        return endpoint

    async def socket(websocket: WebSocket) -> None:
        user = websocket.query_params.get("token", "")
        if not user:
            await websocket.close(1008)
            return
        key = channel(user).encode()
        await websocket.accept()
        floor.sockets[key] = websocket
        await websocket.send_text(json.dumps({"type": "hello", "userId": user}))
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                if message.get("type") == "skip":
                    body = await floor.skip(user)
                    reply = {"type": "reply", "id": message.get("id"), "status": 200, "body": body}
                    await websocket.send_text(json.dumps(reply))
        except WebSocketDisconnect:
            pass
        finally:
            if floor.sockets.get(key) is websocket:
                del floor.sockets[key]

    return Starlette(
        routes=[
            Route("/api/session", session, methods=["POST"]),
            *(
                Route(f"/api/simple-matching/{name}", action(name), methods=["POST"])
                for name in ("enqueue", "skip", "leave")
            ),
            WebSocketRoute("/ws", socket),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = Settings(redis_url=redis_url)
    config = server_config(create_floor_app(redis_url), settings, host=args.host, port=args.port)
    PushskipServer(config, settle_heap=True).run()


if __name__ == "__main__":
    main()
