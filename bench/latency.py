"""Skip -> partner notified: pairs, a paced Poisson load of skips, and the join.

Each pair is a *receiver* (its partner socket on /ws, or a client polling
`events?after=` every 500 ms, in the listener process) and a *skipper* (HTTP
only, from this process). A skip is `POST /api/simple-matching/skip
{"requeue": false}` by the skipper; its latency runs from just before the
request is written to the moment the receiver's client has the
`partner-skipped` event. Both users then go back to an idle pool and are
re-paired at once with *another* partner (the server's rematch cooldown
forbids the same two for PUSHSKIP_REMATCH_COOLDOWN_S; the bench keeps its own
copy of that rule), so every pair is skippable again within milliseconds.

Re-pairing uses the same enqueue Lua script as `POST enqueue`, sent straight
to Redis in one pipeline (receiver, then skipper: with an otherwise empty
queue the second call pairs them), so the app process spends its CPU on the
skip path being measured. Without access to Redis it falls back to the HTTP
route, one pair at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.harness import UI, Bench
from bench.httpc import HttpError, HttpPool
from bench.procs import CpuMeter
from bench.stats import Sent, join, slim
from pushskip.config import DEFAULT_LOG_RETENTION_S
from pushskip.replies import EnqueueReply, ReplyError
from pushskip.store import enqueue_args, leave_args

SKIP_PATH = "/api/simple-matching/skip"
SKIP_BODY = b'{"requeue":false}'
STALE_S = 3600
# The bench's users all come from one address; no per-address cap applies to it.
ADDRESS = "bench"
MAX_WAITING = 1_000_000
RETENTION_MS = DEFAULT_LOG_RETENTION_S * 1000
COOLDOWN_MARGIN_S = 0.25
PAIR_BATCH = 500
PAIR_COALESCE_S = 0.005

User = tuple[str, str]  # (userId, token)


async def paced(
    rate: float,
    warmup_s: float,
    duration_s: float,
    fire: Callable[[int, bool], Coroutine[Any, Any, None]],
    *,
    rng: random.Random,
    on_tick: Callable[[float], None] | None = None,
    max_inflight: int = 20_000,
    drain_s: float = 30.0,
) -> dict[str, Any]:
    """Open-loop Poisson arrivals: fire(t_sched_ns, measured) at each, never waiting for one."""
    loop = asyncio.get_running_loop()  # loop.time() is time.monotonic(): same clock as monotonic_ns
    start = loop.time() + 0.02
    measure_from = start + warmup_s
    end = measure_from + duration_s
    tasks: set[asyncio.Task[None]] = set()
    arrivals = overflow = 0
    t = start
    last_tick = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_inflight:
            overflow += 1
            continue
        measured = t >= measure_from
        arrivals += measured
        task = asyncio.create_task(fire(int(t * 1e9), measured))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if on_tick is not None and t - last_tick > 0.25:
            last_tick = t
            on_tick(t - start)
    still = len(tasks)
    if tasks:
        await asyncio.wait(set(tasks), timeout=drain_s)
    unfinished = len(tasks)
    for task in list(tasks):
        task.cancel()
    return {
        "arrivals": arrivals,
        "overflow": overflow,
        "in_flight_at_end": still,
        "unfinished": unfinished,
        "window_s": duration_s,
    }


class RedisPairer:
    """Pairs (receiver, skipper) with the enqueue script, many pairs per pipeline."""

    def __init__(
        self, redis_url: str, outbox: frozenset[str] = frozenset(), script_key: str = ""
    ) -> None:
        """`outbox`: the outbox targets the app records for (its scripts must be the same);
        `script_key`: the key a script declares (in a cluster: its hash tag), or none."""
        from bench.resp import Resp

        self.resp = Resp(redis_url)
        self.outbox = outbox
        self.declared = [1, script_key] if script_key else [0]
        self.sha: dict[str, str] = {}

    async def _sha(self, name: str) -> str:
        from pushskip.scripts import source

        if name not in self.sha:
            text = source(name, retention_ms=RETENTION_MS, outbox=self.outbox).text
            (sha,) = await self.resp.pipeline([["SCRIPT", "LOAD", text]])
            self.sha[name] = sha
        return self.sha[name]

    async def pair(self, plan: list[tuple[User, User]]) -> list[str | None]:
        sha = await self._sha("enqueue")
        commands: list[list[Any]] = []
        for r, s in plan:
            for user in (r[0], s[0]):
                args = enqueue_args(
                    user, stale_s=STALE_S, address=ADDRESS, max_waiting=MAX_WAITING
                )
                commands.append(["EVALSHA", sha, *self.declared, *args])
        replies = await self.resp.pipeline(commands)
        rooms: list[str | None] = []
        for i, (r, _) in enumerate(plan):
            first, second = replies[2 * i], replies[2 * i + 1]
            room = None
            waiting: EnqueueReply | None = None
            matched: EnqueueReply | None = None
            with contextlib.suppress(ReplyError):
                waiting, matched = EnqueueReply.decode(first), EnqueueReply.decode(second)
            if (
                waiting is not None
                and matched is not None
                and waiting.status == "waiting"
                and matched.match is not None
                and matched.match.get("partnerId") == r[0]
            ):
                room = matched.match["roomName"]
            rooms.append(room)
        return rooms

    async def unpair(self, users: list[User]) -> None:
        sha = await self._sha("leave")
        await self.resp.pipeline(
            [["EVALSHA", sha, *self.declared, *leave_args(u[0], cooldown_s=1)] for u in users]
        )

    async def close(self) -> None:
        await self.resp.close()


class HttpPairer:
    """The fallback: `POST enqueue` for the receiver, then for the skipper, one pair at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.lock = asyncio.Lock()

    async def pair(self, plan: list[tuple[User, User]]) -> list[str | None]:
        rooms: list[str | None] = []
        async with self.lock:
            for r, s in plan:
                room = None
                try:
                    _, b1 = await self.pool.request(
                        "POST", "/api/simple-matching/enqueue", token=r[1], body=b"{}"
                    )
                    _, b2 = await self.pool.request(
                        "POST", "/api/simple-matching/enqueue", token=s[1], body=b"{}"
                    )
                    first, second = json.loads(b1), json.loads(b2)
                    if (
                        first.get("status") == "waiting"
                        and second.get("status") == "matched"
                        and second["match"]["partnerId"] == r[0]
                    ):
                        room = second["match"]["roomName"]
                except (HttpError, ValueError, KeyError):
                    pass
                rooms.append(room)
        return rooms

    async def close(self) -> None:
        self.pool.close()

    async def unpair(self, users: list[User]) -> None:
        async with self.lock:
            for u in users:
                with contextlib.suppress(HttpError):
                    await self.pool.request(
                        "POST", "/api/simple-matching/leave", token=u[1], body=b"{}"
                    )


class Scenario:
    """P receivers and P skippers against one app, re-paired with rotating partners."""

    def __init__(
        self,
        bench: Bench,
        *,
        name: str,
        base: str,
        ws_url: str,
        pairs: int,
        transport: str,
        app_pid: int | None,
        seed: int = 1,
        app_children: bool = False,
        skip_via: str = "http",
        redis_url: str | None = None,
        outbox: frozenset[str] = frozenset(),
        redis_pids: list[int] | None = None,
        script_key: str = "",
    ) -> None:
        """`redis_url`: the app's Redis when it is not the bench's (another db, another
        deployment); `outbox`: the outbox targets the app records entries for (the re-pairing
        must record them too); `redis_pids`: the Redis server processes to measure, when not
        the bench's; `script_key`: the one key scripts declare (a cluster's hash tag)."""
        self.bench = bench
        self.redis_pids = redis_pids
        # "ws": the skippers hold sockets too (indices pairs + i in the listener) and skip
        # over them (`{"type":"skip",...}`, answered by a `reply`), instead of over HTTP.
        self.skip_via = skip_via
        self._rids = itertools.count(1)
        # app_pid is a supervisor (`serve --workers N`): its children's CPU is the app's.
        self.app_children = app_children
        self.name = name
        self.base = base
        self.ws_url = ws_url
        self.n = pairs
        self.transport = transport
        self.app_pid = app_pid
        self.rng = random.Random(seed)
        self.pool = HttpPool(base, size=256)
        pair_url = redis_url or bench.redis_url
        self.redis_url = pair_url
        self.pairer: RedisPairer | HttpPairer = (
            RedisPairer(pair_url, outbox, script_key)
            if pair_url is not None
            else HttpPairer(HttpPool(base, 8))
        )
        self.receivers: list[User] = []
        self.skippers: list[User] = []
        self.idle_r: collections.deque[int] = collections.deque()
        self.idle_s: collections.deque[int] = collections.deque()
        self.cooldown: dict[tuple[int, int], float] = {}
        self.cooldown_s = bench.cfg.cooldown_s + COOLDOWN_MARGIN_S
        self.matched: list[int] = []  # skippers in a match
        self.where: dict[int, int] = {}  # skipper -> index in matched
        self.partner: dict[int, tuple[int, str]] = {}  # skipper -> (receiver, room)
        self.sent: dict[tuple[int, str], Sent] = {}
        self.dropped = 0
        self.pair_failures = 0
        self.skip_failures: collections.Counter[str] = collections.Counter()
        self._wake = asyncio.Event()
        self._pair_task: asyncio.Task[None] | None = None

    # ---- setup / teardown ----------------------------------------------------------------
    async def setup(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.receivers = await self.bench.sessions(self.base, self.n)
        self.skippers = await self.bench.sessions(self.base, self.n)
        listener = self.bench.listener
        if self.transport == "ws":
            got = await listener.call(
                "ws_connect",
                url=self.ws_url,
                users=[[i, f"token={tok}"] for i, (_, tok) in enumerate(self.receivers)],
            )
            if got["failed"]:
                raise RuntimeError(f"{got['failed']} of {self.n} sockets failed: {got['errors']}")
            if self.skip_via == "ws":
                got = await listener.call(
                    "ws_connect",
                    url=self.ws_url,
                    users=[
                        [self.n + i, f"token={tok}"] for i, (_, tok) in enumerate(self.skippers)
                    ],
                )
                if got["failed"]:
                    raise RuntimeError(f"{got['failed']} skipper sockets failed: {got['errors']}")
        else:
            got = await listener.call(
                "poll_start",
                base=self.base,
                interval_s=self.bench.cfg.poll_interval_s,
                users=[[i, tok] for i, (_, tok) in enumerate(self.receivers)],
            )
            if got["failed"]:
                raise RuntimeError(f"{got['failed']} pollers failed: {got['errors']}")
        self.idle_r.extend(range(self.n))
        self.idle_s.extend(range(self.n))
        self._pair_task = asyncio.create_task(self._pair_loop())
        self._wake.set()
        deadline = time.monotonic() + 60
        while len(self.matched) < self.n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.matched)} of {self.n} pairs formed")
            await asyncio.sleep(0.02)
        return {"setup_s": round(time.monotonic() - t0, 2)}

    async def teardown(self) -> None:
        if self._pair_task:
            self._pair_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pair_task
        await self.bench.listener.call("close_all")
        self.pool.close()
        await self.pairer.close()

    # ---- pairing ---------------------------------------------------------------------------
    def _plan(self, now: float) -> list[tuple[int, int]]:
        plan: list[tuple[int, int]] = []
        blocked: list[int] = []
        while self.idle_r and self.idle_s and len(plan) < PAIR_BATCH:
            r = self.idle_r.popleft()
            chosen = None
            for i, s in enumerate(itertools.islice(self.idle_s, 64)):
                until = self.cooldown.get((r, s))
                if until is None or until <= now:
                    chosen = i
                    break
            if chosen is None:
                blocked.append(r)
                continue
            s = self.idle_s[chosen]
            del self.idle_s[chosen]
            self.cooldown.pop((r, s), None)
            plan.append((r, s))
        self.idle_r.extendleft(reversed(blocked))
        return plan

    async def _pair_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Let a few skips finish first: one pipeline per batch of pairs, not per pair.
            await asyncio.sleep(PAIR_COALESCE_S)
            self._wake.clear()
            plan = self._plan(time.monotonic())
            if plan:
                rooms = await self.pairer.pair(
                    [(self.receivers[r], self.skippers[s]) for r, s in plan]
                )
                failed: list[User] = []
                for (r, s), room in zip(plan, rooms, strict=True):
                    if room is None:
                        self.pair_failures += 1
                        failed += [self.receivers[r], self.skippers[s]]
                        self.idle_r.append(r)
                        self.idle_s.append(s)
                        self.cooldown[(r, s)] = time.monotonic() + self.cooldown_s
                        continue
                    self.partner[s] = (r, room)
                    self.where[s] = len(self.matched)
                    self.matched.append(s)
                if failed:  # put everyone in that plan back to idle on the server too
                    await self.pairer.unpair(failed)
            if self.idle_r and self.idle_s:
                # Some wait on a cooldown: look again shortly.
                asyncio.get_running_loop().call_later(0.02 if plan else 0.05, self._wake.set)

    def _take_pair(self) -> int | None:
        if not self.matched:
            return None
        i = self.rng.randrange(len(self.matched))
        s = self.matched[i]
        last = self.matched.pop()
        if last != s:
            self.matched[i] = last
            self.where[last] = i
        del self.where[s]
        return s

    # ---- skips -----------------------------------------------------------------------------
    async def fire(self, t_sched_ns: int, measured: bool) -> None:
        s = self._take_pair()
        if s is None:
            self.dropped += measured
            return
        r, room = self.partner.pop(s)
        pool = self.pool
        rec = Sent(t_sched_ns, 0, measured=measured)
        self.sent[(r, room)] = rec
        if self.skip_via == "ws":
            await self._fire_ws(rec, r, s)
            return
        try:
            conn = await pool.acquire()
        except OSError as exc:
            self.skip_failures[f"connect: {exc!r}"[:120]] += 1
            self._release_pair(r, s)
            return
        raw = conn.build("POST", SKIP_PATH, token=self.skippers[s][1], body=SKIP_BODY)
        rec.t_send_ns = time.monotonic_ns()
        try:
            status, body = await conn.send(raw)
            rec.t_resp_ns = time.monotonic_ns()
            if status == 200 and b'"skipped":true' in body:
                rec.ok = True
            else:
                self.skip_failures[f"{status} {body[:120]!r}"] += 1
        except HttpError as exc:
            self.skip_failures[str(exc)[:120]] += 1
        finally:
            pool.release(conn)
            self._release_pair(r, s)

    async def _redis_calls(self) -> int | None:
        """Script calls (EVALSHA, EVAL) Redis has run so far: its commandstats also count
        the commands a script runs, which say more about the scripts than the app."""
        if self.bench.redis is None:
            return None
        stats = await self.bench.redis.info("commandstats")  # server-wide: every db
        names = ("cmdstat_evalsha", "cmdstat_eval")
        return sum(int(stats.get(k, {}).get("calls", 0)) for k in names)

    async def _fire_ws(self, rec: Sent, r: int, s: int) -> None:
        """The skip over the skipper's socket, sent and timed by the listener."""
        try:
            got = await self.bench.listener.call(
                "ws_skip", idx=self.n + s, rid=f"s{next(self._rids)}"
            )
            rec.t_send_ns = got.get("t_send_ns") or time.monotonic_ns()
            rec.t_resp_ns = got.get("t_resp_ns") or 0
            if got["done"]:
                rec.ok = True
            else:
                self.skip_failures[str(got.get("error"))[:120]] += 1
        except RuntimeError as exc:
            self.skip_failures[str(exc)[:120]] += 1
        finally:
            self._release_pair(r, s)

    def _release_pair(self, r: int, s: int) -> None:
        """Both users are idle again (whatever the skip's outcome); re-pair them elsewhere."""
        self.cooldown[(r, s)] = time.monotonic() + self.cooldown_s
        self.idle_r.append(r)
        self.idle_s.append(s)
        self._wake.set()

    async def run(
        self,
        rate: float,
        warmup_s: float,
        duration_s: float,
        on_tick: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        """One paced phase; returns its latency summary and the raw latencies (ms)."""
        self.sent = {}
        self.dropped = 0
        self.skip_failures.clear()
        await self.bench.listener.call("flush")  # forget what arrived before this phase
        calls0 = await self._redis_calls()
        pids = self.bench.pids(app=self.app_pid)
        if self.redis_pids is not None:
            pids["redis"] = None
            pids.update({f"redis{i}": pid for i, pid in enumerate(self.redis_pids)})
        children = {"app"} if self.app_children else set()
        if not self.app_children and self.app_pid is not None:
            # The app's own child processes (offload.py: the LiveKit SDK's deliveries).
            pids["app_helpers"] = self.app_pid
            children.add("app_helpers")
        meter = CpuMeter(pids, children=frozenset(children)).start()
        run = await paced(rate, warmup_s, duration_s, self.fire, rng=self.rng, on_tick=on_tick)
        cpu = meter.stop()
        # Every skip the app answered in the meter's window (warm-up included), and the
        # app's CPU over that window: what one skip + re-pair cycle costs the app.
        answered = sum(1 for r in self.sent.values() if r.ok)
        calls1 = await self._redis_calls()
        # Script calls per skip, every client's: the app's, and the bench's re-pairing (2).
        redis_calls_per_skip = (
            round((calls1 - calls0) / answered, 2)
            if calls0 is not None and calls1 is not None and answered
            else None
        )
        app_s = meter.seconds.get("app")
        cpu_ms_per_skip = (
            round(1000 * app_s / answered, 3) if app_s is not None and answered else None
        )
        helpers_s = meter.seconds.get("app_helpers")
        helpers_ms_per_skip = (
            round(1000 * helpers_s / answered, 3) if helpers_s is not None and answered else None
        )
        redis_s = sum(v for k, v in meter.seconds.items() if k.startswith("redis"))
        redis_ms_per_skip = round(1000 * redis_s / answered, 3) if answered else None
        grace = 0.5 if self.transport == "ws" else self.bench.cfg.poll_interval_s + 0.5
        await asyncio.sleep(grace)
        got = await self.bench.listener.call("flush")
        result = join(self.sent, got.pop("records"))
        result.update(run)
        measured_ok = sum(1 for r in self.sent.values() if r.measured and r.ok)
        result.update(
            {
                "name": self.name,
                "transport": self.transport,
                "skip_via": self.skip_via,
                "pairs": self.n,
                "rate_target": rate,
                "rate_offered": round(run["arrivals"] / duration_s, 1),
                "rate_achieved": round(measured_ok / duration_s, 1),
                "dropped_no_pair": self.dropped,
                "pair_failures": self.pair_failures,
                "skip_failures": dict(self.skip_failures.most_common(5)),
                "http_connections_peak": self.pool.peak_open,
                "cpu_pct": cpu,
                "app_cpu_ms_per_skip": cpu_ms_per_skip,
                "app_helpers_cpu_ms_per_skip": helpers_ms_per_skip,
                "redis_cpu_ms_per_skip": redis_ms_per_skip,
                "redis_scripts_per_skip": redis_calls_per_skip,
                "skips_answered": answered,
                "listener": got,
            }
        )
        return result


def _progress_to(ui: UI, task: Any, completed: float) -> None:
    ui.update(task, completed=completed)


async def _run_scenario(bench: Bench, sc: Scenario, task: Any, total: float) -> dict[str, Any]:
    """Set up, run at the configured rate, tear down, log; the slimmed result."""
    cfg = bench.cfg
    setup = await sc.setup()
    try:
        result = await sc.run(
            cfg.latency_rate,
            cfg.latency_warmup_s,
            cfg.latency_duration_s,
            on_tick=functools.partial(_progress_to, bench.ui, task),
        )
    finally:
        await sc.teardown()
    result.update(setup)
    bench.ui.update(task, completed=total)
    lat = result["latency_ms"]
    bench.ui.log(
        f"  {sc.name}: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
        f"lost {result['lost']}, errors {result['errors']}"
    )
    return slim(result)


async def phase_latency(bench: Bench, results: dict[str, Any]) -> None:
    """The `latency` phase: WebSocket then polling for each pair count, results["latency"]."""
    cfg = bench.cfg
    app = bench.app_target()
    runs = []
    for pairs in cfg.latency_pairs:
        for transport in ("ws", "poll"):
            name = f"{transport}-{pairs}"
            total = cfg.latency_warmup_s + cfg.latency_duration_s
            task = bench.ui.task(
                f"latency: {pairs} pairs over {'WebSocket' if transport == 'ws' else 'polling'} "
                f"@ {cfg.latency_rate:g} skips/s",
                total=total,
            )
            sc = Scenario(
                bench,
                name=name,
                base=app.base,
                ws_url=app.ws_url,
                pairs=pairs,
                transport=transport,
                app_pid=app.pid,
                seed=pairs,
            )
            runs.append(await _run_scenario(bench, sc, task, total))
    # The same load with the skip sent over the skipper's own socket, at the largest count.
    pairs = max(cfg.latency_pairs)
    total = cfg.latency_warmup_s + cfg.latency_duration_s
    task = bench.ui.task(
        f"latency: {pairs} pairs, skip over the socket @ {cfg.latency_rate:g} skips/s",
        total=total,
    )
    sc = Scenario(
        bench,
        name=f"wsskip-{pairs}",
        base=app.base,
        ws_url=app.ws_url,
        pairs=pairs,
        transport="ws",
        app_pid=app.pid,
        seed=pairs + 1,
        skip_via="ws",
    )
    runs.append(await _run_scenario(bench, sc, task, total))
    results["latency"] = runs
