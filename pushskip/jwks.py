"""The app's JWKS: its public keys, fetched without blocking, cached, and fetched again
for a `kid` we do not know (key rotation), at most once every few seconds.

Policy:
- A token whose key is cached never waits on the network, whatever the JWKS
  server is doing (down, slow).
- A token with an unknown `kid` makes one fetch (shared by every request
  waiting for it), unless an unknown `kid` made one in the last
  `min_refetch_s` (so random kids cannot make us hammer the JWKS); it
  waits for that fetch at most `fetch_timeout_s`, then is refused if the key
  is still unknown.
- The set is also refreshed every `refresh_s` in the background, so a key
  the app withdrew stops being accepted.
- Only asymmetric keys are used: an `oct` (shared-secret) key in a JWKS is
  ignored, so the JWKS can never turn into an HMAC secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, NamedTuple

import httpx
import jwt
from jwt import PyJWK

from pushskip.tasks import cancel_and_wait

logger = logging.getLogger("pushskip.jwks")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
MIN_REFETCH_S = 5.0
REFRESH_S = 300.0
FETCH_TIMEOUT_S = 3.0
MAX_JWKS_BYTES = 256 * 1024


class Key(NamedTuple):
    kid: str | None
    key: Any


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        min_refetch_s: float = MIN_REFETCH_S,
        refresh_s: float = REFRESH_S,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.min_refetch_s = min_refetch_s
        self.refresh_s = refresh_s
        self.fetch_timeout_s = fetch_timeout_s
        # The JWK objects of the last good fetch, by kid (None: a key without one).
        self._jwks: dict[str | None, dict[str, Any]] = {}
        # Keys parsed for one algorithm: (kid, alg) -> Key.
        self._parsed: dict[tuple[str | None, str], Key] = {}
        # When a token with an unknown kid last made us fetch (the scheduled refresh aside).
        self._last_refetch = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.fetches = 0

    def __repr__(self) -> str:
        return f"JwksKeys(url={self.url!r}, keys={len(self._jwks)})"

    async def start(self) -> None:
        """Fetch in the background now and every `refresh_s`; does not wait for the fetch."""
        self._client = httpx.AsyncClient(timeout=self.fetch_timeout_s, follow_redirects=False)
        self._start_fetch()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="pushskip-jwks")

    async def stop(self) -> None:
        tasks = [t for t in (self._refresher, self._fetching) if t is not None]
        await cancel_and_wait(tasks)
        if self._client is not None:
            await self._client.aclose()

    def has(self, kid: str) -> bool:
        """Whether the last fetched set still holds `kid`."""
        return kid in self._jwks

    async def key(self, kid: str | None, alg: str) -> Key | None:
        """The key for a token's `kid` and `alg`, fetching the set again if it is unknown;
        None when there is no such key (or the JWKS cannot be reached in time)."""
        found = self._find(kid, alg)
        if found is not None:
            return found
        await self._refetch()
        return self._find(kid, alg)

    def _find(self, kid: str | None, alg: str) -> Key | None:
        if alg not in ASYMMETRIC_ALGORITHMS:
            return None
        if kid is None and None not in self._jwks and len(self._jwks) == 1:
            kid = next(iter(self._jwks))  # one key, and a token that does not name it
        parsed = self._parsed.get((kid, alg))
        if parsed is not None:
            return parsed
        data = self._jwks.get(kid)
        if data is None or data.get("alg") not in (None, alg):
            return None
        try:
            key = Key(kid, PyJWK(data, algorithm=alg).key)
        except jwt.PyJWTError:
            return None  # a key of another type than the token's algorithm
        self._parsed[(kid, alg)] = key
        return key

    async def _refetch(self) -> None:
        if self._fetching is None:
            if time.monotonic() - self._last_refetch < self.min_refetch_s:
                return
            self._last_refetch = time.monotonic()
            self._start_fetch()
        assert self._fetching is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._fetching), self.fetch_timeout_s)

    def _start_fetch(self) -> None:
        """A fetch, unless one is under way (then that one serves)."""
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(), name="pushskip-jwks-fetch")
            self._fetching.add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _fetch(self) -> None:
        self.fetches += 1
        assert self._client is not None, "JwksKeys.start() was not called"
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
            keys = self._usable(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning(
                "JWKS %s not fetched: %r; keeping %d keys", self.url, exc, len(self._jwks)
            )
            return
        if set(keys) != set(self._jwks):
            logger.info("JWKS %s: keys %s", self.url, sorted(str(k) for k in keys))
        self._jwks = keys
        self._parsed = {k: v for k, v in self._parsed.items() if k[0] in keys}

    @staticmethod
    def _usable(document: Any) -> dict[str | None, dict[str, Any]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS (no keys list)")
        keys: dict[str | None, dict[str, Any]] = {}
        for item in document["keys"]:
            if not isinstance(item, dict) or item.get("kty") not in ASYMMETRIC_KEY_TYPES:
                continue
            if item.get("use") not in (None, "sig"):
                continue
            kid = item.get("kid")
            if kid is not None and not isinstance(kid, str):
                continue
            keys[kid] = item
        return keys

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            self._start_fetch()
