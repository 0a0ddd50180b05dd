"""Session tokens: signed with the server secret, naming their user.

A token is `itsdangerous`' URL-safe timed signature over the user id, so every
process sharing `PUSHSKIP_SECRET` accepts it and none needs Redis to check it.
"""

from __future__ import annotations

import re
import secrets
import time

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

USER_ID_RE = re.compile(r"^u_[A-Za-z0-9_-]{16,64}$")
_SALT = "pushskip.session.v1"
# Verified tokens remembered per process (the HMAC is ~7% of a skip's CPU).
VERIFIED_CACHE_SIZE = 100_000


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired."""


def new_user_id() -> str:
    return "u_" + secrets.token_urlsafe(16)


class TokenSigner:
    def __init__(self, secret: str, *, ttl_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.ttl_s = ttl_s
        # token -> (user id, signed at, epoch s); only tokens whose signature held.
        self._verified: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"TokenSigner(ttl_s={self.ttl_s})"

    def sign(self, user_id: str) -> str:
        return self._serializer.dumps(user_id)

    def verify(self, token: str | None) -> str:
        """The user id a valid token names; raises InvalidToken otherwise."""
        if not token or len(token) > 512:
            raise InvalidToken("missing or malformed token")
        known = self._verified.get(token)
        if known is not None:
            user_id, signed_at = known
            if time.time() - signed_at > self.ttl_s:
                del self._verified[token]
                raise InvalidToken("token expired")
            return user_id
        try:
            user_id, signed = self._serializer.loads(
                token, max_age=self.ttl_s, return_timestamp=True
            )
        except SignatureExpired:
            raise InvalidToken("token expired") from None
        except BadSignature:
            raise InvalidToken("invalid token") from None
        if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
            raise InvalidToken("invalid token")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (user_id, signed.timestamp())
        return user_id


def bearer_token(authorization: str | None) -> str | None:
    """The token from an `Authorization: Bearer <token>` header, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
