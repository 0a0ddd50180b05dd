"""`pushskip serve`: the app under uvicorn, with a private Redis when REDIS_URL is unset."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from pushskip import config, supervisor
from pushskip.app import create_app
from pushskip.config import ConfigError, Settings
from pushskip.embedded import EmbeddedRedis, EmbeddedRedisError
from pushskip.server import (
    PushskipServer,
    configure_logging,
    exit_cleanly_on_signals,
    server_config,
)

logger = logging.getLogger("pushskip.cli")


def serve(args: argparse.Namespace, settings: Settings) -> int:
    exit_cleanly_on_signals()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    listener: socket.socket | None = None
    if workers > 1:
        # Several workers: the parent binds the port (before starting Redis, so a
        # taken port fails fast) and hands the socket to each of them.
        configure_logging(logging.getLogger().getEffectiveLevel(), workers=True)
        try:
            listener = supervisor.listen(host, port)
        except OSError as exc:
            print(f"pushskip: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
    embedded: EmbeddedRedis | None = None
    try:
        if settings.redis_url is None:
            try:
                embedded = EmbeddedRedis(binary=settings.redis_server)
                settings = settings.with_redis_url(embedded.start())
            except EmbeddedRedisError as exc:
                print(f"pushskip: {exc}", file=sys.stderr)
                return 1
            logger.info("REDIS_URL is unset: started a private Redis at %s", settings.redis_url)
        if listener is not None:
            logger.info("serving on http://%s:%d with %d workers", host, port, workers)
            return supervisor.run(settings, listener, host=host, port=port, workers=workers)
        app = create_app(settings)
        server = PushskipServer(
            server_config(app, settings, host=host, port=port), settle_heap=True
        )
        logger.info("serving on http://%s:%d", host, port)
        server.run()
    finally:
        # The private Redis goes last, after every socket and request is done
        # (with workers: after every worker has exited).
        if listener is not None:
            listener.close()
        if embedded is not None:
            embedded.close()
    return 0


def workers_arg(raw: str) -> int:
    try:
        return config.worker_count("--workers", raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushskip", description=__doc__)
    parser.add_argument("--log-level", help="default: PUSHSKIP_LOG_LEVEL, else INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the API, WebSocket and demo page")
    p_serve.add_argument("--host", help="default: HOST, else 127.0.0.1")
    p_serve.add_argument("--port", type=int, help="default: PORT, else 8000")
    p_serve.add_argument(
        "--workers",
        type=workers_arg,
        help="processes serving the one port, or `auto`: one per core "
        "(default: PUSHSKIP_WORKERS, else 1: this process serves alone)",
    )
    p_serve.set_defaults(func=serve)
    args = parser.parse_args(argv)
    configure_logging(args.log_level or config.read_env("log_level") or config.DEFAULT_LOG_LEVEL)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pushskip: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings))


if __name__ == "__main__":
    raise SystemExit(main())
