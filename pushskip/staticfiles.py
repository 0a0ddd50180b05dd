"""Static files with cache headers: revalidate always, so a deploy is seen at once.

The client and demo are a few KiB and served with ETag/Last-Modified by
Starlette; `no-cache` makes browsers revalidate (a cheap 304) rather than run
an old pushskip.js against a new server.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CACHE_CONTROL = "no-cache"


class CachedStaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = CACHE_CONTROL
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response
