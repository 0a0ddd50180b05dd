"""A stand-in LiveKit server for the tests and the bench: no LiveKit server can be installed
on these machines (it is not on PyPI, Debian or npm).

It speaks what pushskip uses of LiveKit, as LiveKit's own SDK sends it:

- the room service's Twirp route `POST /twirp/livekit.RoomService/DeleteRoom`
  (a protobuf `DeleteRoomRequest`; the answer a protobuf `DeleteRoomResponse`,
  or a Twirp JSON error such as `not_found` for a room it does not have);
- every request's bearer token checked with the SDK's own `TokenVerifier`
  (DeleteRoom needs the `room_create` grant);
- joining a room (`join()`, and `GET /rtc/validate?access_token=&room=`), as a
  LiveKit server admits a client: the token must verify, grant `room_join`,
  name that room, and carry an identity;
- webhooks as LiveKit sends them, signed with the SDK (`signed_webhook`).

It records every call, and can be made slow (`delay_s`), failing (`fail_status`)
or down (stop it). `python -m bench.livekit_standin --port N` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import time
from dataclasses import dataclass, field

from google.protobuf.json_format import MessageToJson
from livekit import api as lk
from livekit.protocol import models as lk_models
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

API_KEY = "devkey-standin"
API_SECRET = "standin-secret-of-at-least-32-characters"
DELETE_ROOM = "/twirp/livekit.RoomService/DeleteRoom"


@dataclass
class Call:
    method: str
    room: str
    at: float
    ok: bool
    detail: str = ""


@dataclass
class LiveKitStandIn:
    api_key: str = API_KEY
    api_secret: str = API_SECRET
    delay_s: float = 0.0
    fail_status: int | None = None
    rooms: dict[str, set[str]] = field(default_factory=dict)  # room -> identities in it
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verifier = lk.TokenVerifier(self.api_key, self.api_secret)
        self.app = Starlette(
            routes=[
                Route(DELETE_ROOM, self.delete_room, methods=["POST"]),
                Route("/rtc/validate", self.validate, methods=["GET"]),
                Route("/count", self.count, methods=["GET"]),
            ]
        )

    def deleted(self) -> list[str]:
        """The rooms DeleteRoom was asked for and answered (deleted, or not found)."""
        return [c.room for c in self.calls if c.method == "DeleteRoom" and c.ok]

    def join(self, token: str, room: str) -> str:
        """Admit a client to `room` as LiveKit would; its identity, or PermissionError."""
        try:
            claims = self.verifier.verify(token)
        except Exception as exc:
            raise PermissionError(f"token refused: {exc}") from None
        video = claims.video
        if not video or not video.room_join:
            raise PermissionError("no room_join grant")
        if video.room != room:
            raise PermissionError(f"token is for room {video.room!r}, not {room!r}")
        if not claims.identity:
            raise PermissionError("no identity")
        self.rooms.setdefault(room, set()).add(claims.identity)
        self.calls.append(Call("Join", room, time.monotonic(), True, claims.identity))
        return claims.identity

    async def validate(self, request: Request) -> Response:
        try:
            identity = self.join(
                request.query_params.get("access_token", ""), request.query_params.get("room", "")
            )
        except PermissionError as exc:
            return PlainTextResponse(str(exc), status_code=401)
        return PlainTextResponse(f"success {identity}")

    async def delete_room(self, request: Request) -> Response:
        body = await request.body()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            claims = self.verifier.verify(token) if scheme.lower() == "bearer" else None
        except Exception as exc:
            claims = None
            why = str(exc)
        else:
            why = "no bearer token"
        if claims is None:
            return self._error(401, "unauthenticated", why, "")
        if not claims.video or not claims.video.room_create:
            return self._error(403, "permission_denied", "needs the room_create grant", "")
        if request.headers.get("content-type") != "application/protobuf":
            return self._error(400, "malformed", "not a protobuf request", "")
        req = lk.DeleteRoomRequest.FromString(body)
        if self.fail_status is not None:
            return self._error(self.fail_status, "unavailable", "made to fail", req.room)
        if req.room not in self.rooms:
            return self._error(404, "not_found", "requested room does not exist", req.room)
        del self.rooms[req.room]
        self.calls.append(Call("DeleteRoom", req.room, time.monotonic(), True))
        return Response(
            lk.DeleteRoomResponse().SerializeToString(), media_type="application/protobuf"
        )

    def _error(self, status: int, code: str, msg: str, room: str) -> Response:
        # A not_found DeleteRoom is an answer pushskip counts as done: recorded as answered.
        self.calls.append(Call("DeleteRoom", room, time.monotonic(), code == "not_found", code))
        return JSONResponse({"code": code, "msg": msg}, status_code=status)

    async def count(self, request: Request) -> Response:
        deletes = [c for c in self.calls if c.method == "DeleteRoom"]
        return JSONResponse({"deletes": len(deletes), "answered": len(self.deleted())})

    def signed_webhook(self, event: str, room: str, identity: str) -> tuple[bytes, str]:
        """A webhook as LiveKit sends it: JSON body and its `Authorization` token."""
        message = lk.WebhookEvent(
            event=event,
            room=lk_models.Room(name=room, sid="RM_" + room[-8:]),
            participant=lk_models.ParticipantInfo(identity=identity, sid="PA_" + identity[-8:]),
            id="EV_" + hashlib.sha256(f"{event}{room}{identity}{time.time()}".encode()).hexdigest(),
            created_at=int(time.time()),
        )
        body = MessageToJson(message).encode()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        token = lk.AccessToken(self.api_key, self.api_secret).with_sha256(digest).to_jwt()
        return body, token


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.livekit_standin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    standin = LiveKitStandIn(delay_s=args.delay)
    # The bench deletes rooms it never joined: every room counts as existing there.
    standin.rooms = _AllRooms()
    uvicorn.run(standin.app, host="127.0.0.1", port=args.port, log_level="warning")


class _AllRooms(dict[str, set[str]]):
    def __contains__(self, key: object) -> bool:
        return True

    def __delitem__(self, key: str) -> None:
        self.pop(key, None)


if __name__ == "__main__":
    main()
