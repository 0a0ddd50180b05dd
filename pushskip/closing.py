"""Why a WebSocket is closed: a value with its code, its text and its metric.

Whoever decides to close a socket picks one of these; `ws.py` sends its code
and text, and counts it in the reason's own counter
(`pushskip_ws_<metric>_closes_total`), so the client and the operator are told
the same, true thing. Codes: API.md, WebSocket.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CloseReason:
    code: int
    text: str
    # The counter's name part, and a sentence for its help text.
    metric: str
    about: str

    def because(self, detail: str) -> CloseReason:
        """The same reason with a more specific text (still at most 123 bytes on the wire)."""
        return dataclasses.replace(self, text=detail[:120])


BAD_TOKEN = CloseReason(4401, "Invalid token", "bad_token", "the token was missing or invalid")
BAD_ORIGIN = CloseReason(4403, "Origin not allowed", "bad_origin", "the Origin is not allowed")
BANNED = CloseReason(
    4403, "banned", "banned", "the app's backend banned the user (server API)"
)
BAD_REQUEST = CloseReason(1008, "Bad request", "bad_request", "the query was malformed")
RATE_LIMITED = CloseReason(
    1008,
    "Too many messages; slow down",
    "rate_limited",
    "the client sent more messages than PUSHSKIP_WS_MSG_RATE allows",
)
TOO_MANY_SOCKETS = CloseReason(
    4429,
    "Too many sockets for this user",
    "too_many_sockets",
    "the user already held PUSHSKIP_MAX_SOCKETS_PER_USER sockets on this process",
)
SLOW_READER = CloseReason(
    1013,
    "Too slow a reader; poll events?after= and reconnect",
    "slow_reader",
    "the client stopped reading while events piled up",
)
REDIS_UNAVAILABLE = CloseReason(
    1013,
    "Redis is unreachable; poll events?after= and reconnect",
    "redis_unavailable",
    "Redis could not be read for the socket's state or log",
)
LIVE_UNAVAILABLE = CloseReason(
    1013,
    "Live events unavailable; poll events?after= and reconnect",
    "live_unavailable",
    "the pub/sub subscription could not be confirmed",
)
SERVER_ERROR = CloseReason(
    1011,
    "Internal error; poll events?after= and reconnect",
    "server_error",
    "an unexpected error in the server (logged)",
)
SHUTDOWN = CloseReason(
    1001,
    "Server shutting down; reconnect with after=",
    "shutdown",
    "the process is shutting down",
)

REASONS = (
    BAD_TOKEN,
    BAD_ORIGIN,
    BANNED,
    BAD_REQUEST,
    RATE_LIMITED,
    TOO_MANY_SOCKETS,
    SLOW_READER,
    REDIS_UNAVAILABLE,
    LIVE_UNAVAILABLE,
    SERVER_ERROR,
    SHUTDOWN,
)


# What a control message on a user's channel (not an event) may ask of their sockets.
BY_CONTROL = {"banned": BANNED}
