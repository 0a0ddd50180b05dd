"""`pushskip serve`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from pushskip.app import create_app
from pushskip.config import ConfigError, Settings
from pushskip.embedded import EmbeddedRedis, EmbeddedRedisError
from pushskip.server import PushskipServer, server_config

logger = logging.getLogger("pushskip.cli")


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    # uvicorn handles SIGTERM and SIGINT while it serves and re-raises them
    # when done; these handlers turn that (and a signal during start-up) into
    # a normal exit, so the `finally` below stops the private Redis last.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pushskip: {exc}", file=sys.stderr)
        return 2
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        try:
            embedded = EmbeddedRedis()
            settings = settings.with_redis_url(embedded.start())
        except EmbeddedRedisError as exc:
            print(f"pushskip: {exc}", file=sys.stderr)
            return 1
        logger.info("REDIS_URL is unset: started a private Redis at %s", settings.redis_url)
    try:
        app = create_app(settings)
        server = PushskipServer(server_config(app, settings, host=args.host, port=args.port))
        logger.info("serving on http://%s:%d", args.host, args.port)
        server.run()
    finally:
        # The private Redis goes last, after every socket and request is done.
        if embedded is not None:
            embedded.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushskip", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("PUSHSKIP_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the API, WebSocket and demo page")
    p_serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p_serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p_serve.set_defaults(func=serve)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
