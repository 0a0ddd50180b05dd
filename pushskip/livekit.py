"""LiveKit as the media provider, through its official server SDK (`livekit-api`).

- Tokens: `AccessToken` with `VideoGrants(room_join=True, room=<the match's
  room>)` and identity = the user id, valid `PUSHSKIP_MEDIA_TOKEN_TTL_S`.
- Room deletion: the room service's `DeleteRoom` (the SDK's Twirp client), as
  the outbox's `livekit` target: any process, retried with backoff, and a room
  the server says is not there counts as deleted. The SDK's calls run in a
  child process (offload.py), off the serving loop.
- Webhooks: `WebhookReceiver` + `TokenVerifier` with the API key and secret;
  `participant_left` / `participant_joined` become presence news.

Only `app.py` imports this module, and only when LIVEKIT_URL, LIVEKIT_API_KEY
and LIVEKIT_API_SECRET are set.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time

import aiohttp
from livekit import api as lk

from pushskip import keys
from pushskip.media import InvalidMediaWebhook, MediaEvent
from pushskip.offload import ChildWorker, OffloadedTarget, OffloadFailed
from pushskip.outbox import Entry, Target

logger = logging.getLogger("pushskip.livekit")

# A DeleteRoom that takes longer than this is given up and tried again later.
DELETE_TIMEOUT_S = 10.0
# The deleter's own token (the room_create grant), minted with the SDK's AccessToken and
# used for this long before a new one is minted, instead of one per call (each
# AccessToken.to_jwt() costs ~70 us of the serving loop's CPU).
SERVICE_TOKEN_TTL = dt.timedelta(minutes=10)
SERVICE_TOKEN_RENEW_S = 300.0
# A user's grant for a room is minted when the match is sent, and sent again as it is
# when the same match goes to the same user within this long (it is then valid for at
# least the token's lifetime less this).
GRANT_REUSE_S = 30.0
GRANTS_KEPT = 100_000
# A token the minting child has not sent back after this long is minted here instead.
MINT_TIMEOUT_S = 2.0
EVENTS = {"participant_left": "left", "participant_joined": "joined"}


class RoomDeleter:
    """The outbox target that deletes ended matches' rooms (RoomService.DeleteRoom)."""

    name = keys.LIVEKIT_TARGET
    # Deletions under way at once per process: a server answering in 2 s still keeps up
    # with over 100 ended matches a second.
    concurrency = 256

    def __init__(self, url: str, api_key: str, api_secret: str) -> None:
        self.url, self._key, self._secret = url, api_key, api_secret
        # Made in the running loop, at the first deletion.
        self._session: aiohttp.ClientSession | None = None
        self._api: lk.LiveKitAPI | None = None
        self._minted = 0.0

    def __repr__(self) -> str:
        return f"RoomDeleter(url={self.url!r})"

    def _client(self) -> lk.LiveKitAPI:
        now = time.monotonic()
        if self._api is None or now - self._minted > SERVICE_TOKEN_RENEW_S:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=DELETE_TIMEOUT_S),
                    connector=aiohttp.TCPConnector(limit=self.concurrency),
                )
            token = (
                lk.AccessToken(self._key, self._secret)
                .with_grants(lk.VideoGrants(room_create=True))
                .with_ttl(SERVICE_TOKEN_TTL)
                .to_jwt()
            )
            self._api = lk.LiveKitAPI(self.url, token=token, session=self._session)
            self._minted = now
        return self._api

    async def start(self) -> None:
        pass  # the session is made in the running loop, at the first deletion

    async def deliver(self, entry: Entry) -> bool:
        room = str(entry.data.get("room", ""))
        try:
            await self._client().room.delete_room(lk.DeleteRoomRequest(room=room))
        except lk.ServerError as exc:
            if exc.code == lk.ServerErrorCode.NOT_FOUND:
                return True  # already gone (emptied, or deleted by an earlier attempt)
            logger.debug("DeleteRoom %s (attempt %d): %s", room, entry.attempt, exc)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("DeleteRoom %s (attempt %d): %r", room, entry.attempt, exc)
            return False
        return True

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class TokenMinter:
    """Mints a user's token for one room (in the minting child: see offload.py, and here
    when that child cannot answer)."""

    def __init__(self, api_key: str, api_secret: str, ttl_s: int) -> None:
        self._key, self._secret = api_key, api_secret
        self._ttl = dt.timedelta(seconds=ttl_s)

    def mint(self, user_id: str, room: str) -> str:
        return (
            lk.AccessToken(self._key, self._secret)
            .with_identity(user_id)
            .with_grants(lk.VideoGrants(room_join=True, room=room))
            .with_ttl(self._ttl)
            .to_jwt()
        )

    async def start(self) -> None:
        pass

    def handle_now(self, request: tuple[str, str]) -> str:
        return self.mint(*request)

    async def handle(self, request: tuple[str, str]) -> str:
        return self.handle_now(request)

    async def aclose(self) -> None:
        pass


class LiveKit:
    """The media provider (see media.MediaProvider)."""

    name = "livekit"

    def __init__(self, url: str, api_key: str, api_secret: str, *, token_ttl_s: int) -> None:
        self.url = url
        self._ttl = dt.timedelta(seconds=token_ttl_s)
        self._webhooks = lk.WebhookReceiver(lk.TokenVerifier(api_key, api_secret))
        self._rooms = OffloadedTarget(
            functools.partial(RoomDeleter, url, api_key, api_secret),
            name=RoomDeleter.name,
            concurrency=RoomDeleter.concurrency,
        )
        self.minter = TokenMinter(api_key, api_secret, token_ttl_s)
        # Not niced: a user's match waits for its token.
        self.minting = ChildWorker(
            functools.partial(TokenMinter, api_key, api_secret, token_ttl_s),
            name="livekit-tokens",
            answer_timeout_s=MINT_TIMEOUT_S,
        )
        self._grants: dict[tuple[str, str], tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"LiveKit(url={self.url!r}, token_ttl={self._ttl})"

    @property
    def rooms(self) -> Target:
        return self._rooms

    async def start(self) -> None:
        await self.minting.start()

    async def aclose(self) -> None:
        await self.minting.aclose()

    async def _mint(self, user_id: str, room: str) -> str:
        """A token from the minting child; minted here while it starts, or if it fails."""
        if self.minting.ready:
            try:
                return str(await self.minting.call((user_id, room)))
            except OffloadFailed:
                pass
        else:
            self.minting.start_soon()
        return self.minter.mint(user_id, room)

    async def grant(self, user_id: str, room: str) -> dict[str, str]:
        kept = self._grants.get((user_id, room))
        if kept is not None and time.monotonic() - kept[1] < GRANT_REUSE_S:
            token = kept[0]
        else:
            token = await self._mint(user_id, room)
            if len(self._grants) >= GRANTS_KEPT:
                self._grants.clear()
            self._grants[(user_id, room)] = (token, time.monotonic())
        return {"provider": self.name, "url": self.url, "token": token}

    def read_webhook(self, body: bytes, authorization: str | None) -> MediaEvent | None:
        if not authorization:
            raise InvalidMediaWebhook("no Authorization header")
        scheme, _, rest = authorization.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
        try:
            event = self._webhooks.receive(body.decode("utf-8"), token)
        except Exception as exc:  # the SDK raises plain Exceptions, jwt errors, parse errors
            raise InvalidMediaWebhook(str(exc) or type(exc).__name__) from None
        kind = EVENTS.get(event.event)
        if kind is None or not event.room.name or not event.participant.identity:
            return None
        return MediaEvent(kind, event.participant.identity, event.room.name)  # type: ignore[arg-type]
