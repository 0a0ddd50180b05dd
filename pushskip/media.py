"""Media rooms: the interface a media provider (LiveKit) plugs in behind, and what the core
does with one.

The core never imports a provider's SDK: `app.py` builds one only when it is
configured (`livekit.py`). A provider

- grants a user a token for one room (`grant`), minted whenever a match is
  sent to that user, so a replayed or resumed match still carries a valid one
  and no user ever gets another user's token;
- deletes a room when its match ends (`rooms`: an outbox target, so the
  deletion is recorded in the Lua step that ends the match and survives the
  process that made it);
- reads its server's webhooks (`read_webhook`): a matched user leaving their
  match's room starts the presence grace, joining it again cancels it.

`with_media` and the `*_event*` helpers add the `media` object to every Match a
user is given (API.md, Media rooms).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Protocol

from pushskip.outbox import Target
from pushskip.replies import Match


class InvalidMediaWebhook(Exception):
    """A webhook whose signature, or body, does not check out."""


@dataclasses.dataclass(frozen=True, slots=True)
class MediaEvent:
    """What a media server said: `user` left or joined `room`."""

    kind: Literal["left", "joined"]
    user: str
    room: str


class MediaProvider(Protocol):
    name: str

    async def start(self) -> None:
        """Ready its helpers (the app's lifespan calls it before serving)."""

    async def aclose(self) -> None: ...

    async def grant(self, user_id: str, room: str) -> dict[str, str]:
        """`{"provider", "url", "token"}`: lets `user_id` into `room`, and nothing else."""

    @property
    def rooms(self) -> Target:
        """The outbox target that deletes the room of an ended match."""

    def read_webhook(self, body: bytes, authorization: str | None) -> MediaEvent | None:
        """The presence news in a verified webhook (None: nothing pushskip uses);
        InvalidMediaWebhook when it is not verified."""


async def with_media(
    match: Match | None, user_id: str, media: MediaProvider | None
) -> Match | None:
    """`match` as `user_id` is given it: with their own media grant when a provider is on."""
    if match is None or media is None:
        return match
    return {**match, "media": await media.grant(user_id, match["roomName"])}


async def media_event(
    event: dict[str, Any], user_id: str, media: MediaProvider | None
) -> dict[str, Any]:
    """A `matched` event as `user_id` is given it (other events as they are)."""
    if media is None or event.get("type") != "matched" or not isinstance(event.get("match"), dict):
        return event
    return {**event, "match": await with_media(event["match"], user_id, media)}


async def media_event_text(text: str, user_id: str, media: MediaProvider) -> str:
    """The JSON text of an event as `user_id` is given it: a `matched` event gets the media
    grant, any other is passed on as it is (without being parsed)."""
    if '"matched"' not in text:
        return text
    event = json.loads(text)
    granted = await media_event(event, user_id, media)
    return text if granted is event else json.dumps(granted, separators=(",", ":"))
