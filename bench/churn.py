"""`python -m bench.churn`: an address that churns sessions, as an attacker would (issue 18).

N sessions from one client address (an `X-Forwarded-For` behind a trusted
proxy) each re-enqueue as fast as they can, and leave whenever two of them
meet each other; one matched with anyone else holds on (the real user has to
skip it). A 429 is retried after `--backoff-ms`. It runs in a process of its
own so that its load does not slow the clients being measured, and prints its
counts as one JSON line when it stops (after `--seconds`, or on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from bench.httpc import HttpConn, HttpError, split_base

ENQUEUE = "/api/simple-matching/enqueue"
LEAVE = "/api/simple-matching/leave"


async def churn(
    base: str, address: str, sessions: int, seconds: float, backoff_s: float
) -> dict[str, Any]:
    host, port = split_base(base)
    forwarded = {"X-Forwarded-For": address}
    counts = {"enqueues": 0, "answered_429": 0, "bot_meetings": 0, "held_others": 0}
    setup = HttpConn(host, port)
    users: list[tuple[str, str]] = []
    for _ in range(sessions):
        status, body = await setup.send(
            setup.build("POST", "/api/session", body=b"{}", headers=forwarded)
        )
        if status != 200:
            raise SystemExit(f"POST /api/session -> {status} {body[:200]!r}")
        data = json.loads(body)
        users.append((data["userId"], data["token"]))
    setup.close()
    bots = {uid for uid, _ in users}
    stop = asyncio.Event()

    async def bot(token: str) -> None:
        conn = HttpConn(host, port)
        enqueue = conn.build("POST", ENQUEUE, token=token, body=b"{}", headers=forwarded)
        leave = conn.build("POST", LEAVE, token=token, body=b"{}", headers=forwarded)
        holding = None
        while not stop.is_set():
            try:
                status, body = await conn.send(enqueue)
            except HttpError:
                await asyncio.sleep(backoff_s)
                continue
            counts["enqueues"] += 1
            if status == 429:
                counts["answered_429"] += 1
                await asyncio.sleep(backoff_s)
                continue
            data = json.loads(body)
            if data.get("status") == "matched":
                partner = data["match"]["partnerId"]
                if partner in bots:
                    counts["bot_meetings"] += 1
                    await conn.send(leave)
                elif holding != data["match"]["roomName"]:
                    holding = data["match"]["roomName"]
                    counts["held_others"] += 1
        conn.close()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    tasks = [asyncio.create_task(bot(token)) for _, token in users]
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    return {
        **counts,
        "sessions": sessions,
        "seconds": round(elapsed, 2),
        "enqueues_per_s": round(counts["enqueues"] / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    parser.add_argument("--base", required=True, help="the app, http://127.0.0.1:PORT")
    parser.add_argument("--address", default="192.0.2.66")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backoff-ms", type=float, default=20.0)
    args = parser.parse_args()
    result = asyncio.run(
        churn(args.base, args.address, args.sessions, args.seconds, args.backoff_ms / 1000)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
