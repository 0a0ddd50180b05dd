"""The floor: a bare Starlette app where `POST /push/{id}` sends its body to socket `id`.

No Redis, no auth, no hub: what Starlette + uvicorn alone take to turn an
HTTP request into a WebSocket message, run under the same uvicorn settings
as pushskip (`server.server_config`). `python -m bench.floorapp --port N`.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pushskip.config import Settings
from pushskip.server import server_config

sockets: dict[str, WebSocket] = {}


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    key = websocket.query_params.get("id", "")
    sockets[key] = websocket
    await websocket.send_text('{"type":"hello"}')
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        if sockets.get(key) is websocket:
            del sockets[key]


async def push(request: Request) -> Response:
    body = await request.body()
    websocket = sockets.get(request.path_params["id"])
    if websocket is None:
        return JSONResponse({"success": False, "error": "no such socket"}, status_code=404)
    await websocket.send_text(body.decode())
    return JSONResponse({"success": True})


async def healthz(request: Request) -> Response:
    return JSONResponse({"success": True, "sockets": len(sockets)})


app = Starlette(
    routes=[
        Route("/push/{id}", push, methods=["POST"]),
        Route("/healthz", healthz),
        WebSocketRoute("/ws", ws_endpoint),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings(redis_url="unused")
    uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=args.port)).run()


if __name__ == "__main__":
    main()
