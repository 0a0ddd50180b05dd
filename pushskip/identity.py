"""Who is this: pushskip's own session tokens and your app's JWTs behind one call.

`Identity.verify(token)` answers the user id a token names, or raises
`InvalidToken`; no handler knows which kind of token it was. Two verifiers sit
behind it, chosen by settings (API.md, Identity):

- pushskip's own session tokens (`auth.TokenSigner`, `POST /api/session`);
- the app's JWTs (`AppTokens`): HS256 with `PUSHSKIP_JWT_SECRET`, and/or
  RS256/ES256 (and the other asymmetric JOSE algorithms) with a key from
  `PUSHSKIP_JWKS_URL` (`jwks.JwksKeys`). The user id is `sub`; `exp` is
  required; `nbf`, `iat` and, when configured, `aud` and `iss` are checked with
  a 30 s leeway. A symmetric key never comes from the JWKS, and a token's `alg`
  must be the one its key is for, so neither `alg: none` nor an HS256 token
  keyed with a public key gets in.

A JWT is told from a session token by its first characters: a JWT's header is
a base64url JSON object (`eyJ`), a session token's payload a JSON string.
Verified tokens are remembered (with their `exp`, `nbf` and key) so a busy
user's requests cost a dict lookup, not a signature check.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import jwt

from pushskip.auth import InvalidToken, TokenSigner
from pushskip.jwks import ASYMMETRIC_ALGORITHMS, JwksKeys

logger = logging.getLogger("pushskip.identity")

# A JWT's header segment is base64url('{"...'); a session token's payload is base64url('"u_...').
JWT_PREFIX = "eyJ"
MAX_TOKEN_CHARS = 4096
APP_USER_ID = re.compile(r"[A-Za-z0-9_\-.:@]{1,64}")
LEEWAY_S = 30.0
VERIFIED_CACHE_SIZE = 100_000


class AppTokens:
    """The app's JWTs: HS256 with a shared secret, asymmetric keys from a JWKS, or both."""

    def __init__(
        self,
        *,
        secret: str | None,
        jwks: JwksKeys | None,
        audience: str | None,
        issuer: str | None,
    ) -> None:
        if not secret and jwks is None:
            raise ValueError("AppTokens needs a secret, a JWKS, or both")
        self._secret = secret
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        # token -> (user id, exp, kid of its JWKS key or None); only tokens that passed every
        # check (a passed `nbf` or `iat` stays passed).
        self._verified: dict[str, tuple[str, float, str | None]] = {}

    def __repr__(self) -> str:
        return (
            f"AppTokens(hs256={self._secret is not None}, jwks={self.jwks!r}, "
            f"audience={self.audience!r}, issuer={self.issuer!r})"
        )

    async def verify(self, token: str) -> str:
        """The `sub` of a valid app JWT; InvalidToken otherwise."""
        known = self._verified.get(token)
        if known is not None:
            user_id, exp, kid = known
            if time.time() > exp + LEEWAY_S:
                del self._verified[token]
                raise InvalidToken("token expired")
            if kid is None or (self.jwks is not None and self.jwks.has(kid)):
                return user_id
            del self._verified[token]  # its key left the JWKS: checked again from scratch
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("invalid token") from None
        alg = header.get("alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("invalid token")
        key: Any
        key_kid: str | None = None
        if alg == "HS256" and self._secret:
            key = self._secret
        elif isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            found = await self.jwks.key(kid, alg)
            if found is None:
                raise InvalidToken("token signed with an unknown key")
            key, key_kid = found.key, found.kid
        else:
            raise InvalidToken("token algorithm not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.PyJWTError as exc:
            logger.debug("app token refused: %r", exc)
            raise InvalidToken("invalid token") from None
        user_id = claims["sub"]
        if not isinstance(user_id, str) or not APP_USER_ID.fullmatch(user_id):
            raise InvalidToken("token sub is not a valid user id")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (user_id, float(claims["exp"]), key_kid)
        return user_id


class Identity:
    """The one "who is this" call: a token's user id, whichever kind of token it is."""

    def __init__(self, sessions: TokenSigner, app: AppTokens | None = None) -> None:
        self.sessions = sessions
        self.app = app

    def __repr__(self) -> str:
        return f"Identity(sessions={self.sessions!r}, app={self.app!r})"

    async def verify(self, token: str | None) -> str:
        """The user a token names; InvalidToken when it is missing, malformed, forged,
        expired, or signed by a key or algorithm pushskip does not accept."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("missing or malformed token")
        if self.app is not None and token.startswith(JWT_PREFIX):
            return await self.app.verify(token)
        return self.sessions.verify(token)
