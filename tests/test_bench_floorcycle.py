"""bench/floorcycle.py answers the peers' load client as pushskip does, on real Redis.

The floor is only worth quoting if it does the cycle the side-by-side run drives:
two users paired by two enqueues, the partner told `matched` and `partner-skipped`
on its socket, a skip over HTTP and over the socket.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import websockets

from bench.floorcycle import create_floor_app
from tests.helpers import make_settings, run_server
from tests.test_ws import recv_json

API = "/api/simple-matching"


async def test_the_floor_pairs_two_users_and_tells_the_partner_of_each_skip(
    redis: Any, redis_server: Any
) -> None:
    # The floor speaks to one Redis server (not through Sentinel).
    redis_url = getattr(redis_server, "direct_url", redis_server.url)
    app = create_floor_app(redis_url)
    async with (
        run_server(make_settings(redis_url), app=app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):

        async def post(path: str, token: str | None = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await http.post(path, content=b"{}", headers=headers)

        a, b = (await post("/api/session")).json(), (await post("/api/session")).json()
        assert a["token"] != b["token"]
        assert (await post(f"{API}/skip")).status_code == 401

        ws_b_url = url.replace("http", "ws", 1) + "/ws?token=" + b["token"]
        ws_a_url = url.replace("http", "ws", 1) + "/ws?token=" + a["token"]
        async with websockets.connect(ws_b_url) as ws_b, websockets.connect(ws_a_url) as ws_a:
            assert (await recv_json(ws_b))["type"] == "hello"
            assert (await recv_json(ws_a))["type"] == "hello"
            for via in ("http", "socket"):
                assert (await post(f"{API}/enqueue", b["token"])).json() == {"status": "waiting"}
                matched = (await post(f"{API}/enqueue", a["token"])).json()
                assert matched["status"] == "matched"
                room = matched["match"]["roomName"]
                assert {matched["match"]["user1"], matched["match"]["user2"]} == {
                    a["userId"],
                    b["userId"],
                }
                assert await recv_json(ws_b) == {"type": "matched", "roomName": room}
                assert await recv_json(ws_a) == {"type": "matched", "roomName": room}
                if via == "http":
                    reply = (await post(f"{API}/skip", a["token"])).json()
                    assert reply == {"skipped": True}
                else:
                    await ws_a.send(json.dumps({"type": "skip", "id": "s1"}))
                    assert await recv_json(ws_a) == {
                        "type": "reply",
                        "id": "s1",
                        "status": 200,
                        "body": {"skipped": True},
                    }
                assert await recv_json(ws_b) == {"type": "partner-skipped", "roomName": room}
                # The match is over: a second skip finds none.
                assert (await post(f"{API}/skip", a["token"])).json() == {"skipped": False}
        assert (await post(f"{API}/leave", b["token"])).json() == {"success": True}
