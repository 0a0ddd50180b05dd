"""The demo page and static/pushskip.js in a real Chromium, against a real `pushskip serve`.

Needs the `playwright` Python package and a Chromium binary (Debian's
`chromium` at /usr/bin/chromium, or PUSHSKIP_CHROMIUM=/path). Playwright's own
browser download is not used. Without a browser these tests skip, except
under CI (the CI variable set), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from pushskip import keys
from pushskip.embedded import EmbeddedRedis
from tests.app_backend import APP_JWT_SECRET, hs256_token
from tests.helpers import app_process, free_port

try:
    from playwright.async_api import (
        Browser,
        Page,
        Route,
        ViewportSize,
        WebSocketRoute,
        async_playwright,
    )
    from playwright.async_api import expect as pw_expect
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
# A property of one pane's PushskipClient, through the page's test hook.
CLIENT_PROP_JS = (
    "([name, prop]) => window.pushskipDemo.panes.find(p => p.name === name).client[prop]"
)


def chromium_path() -> str | None:
    configured = os.environ.get("PUSHSKIP_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable() -> str | None:
    if async_playwright is None:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set PUSHSKIP_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    reason = browser_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"browser tests cannot run under CI: {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    path = chromium_path()
    assert path is not None
    return path


@pytest.fixture(scope="module")
def server(redis_server: EmbeddedRedis, chromium_executable: str) -> Iterator[str]:
    """One real `pushskip serve` for the module; each test flushes Redis and uses new sessions."""
    with app_process(redis_server.url) as (base, _proc):
        yield base


@pytest.fixture
async def browser(chromium_executable: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def base(server: str, redis: Redis) -> str:
    """The server's URL, with Redis flushed (the `redis` fixture) for this test."""
    return server


# Presence grace of `presence_server` (the default, 5 s, would only make the tests slower).
GRACE_S = 2.0


@pytest.fixture(scope="module")
def presence_server(redis_server: EmbeddedRedis, chromium_executable: str) -> Iterator[str]:
    """A `pushskip serve` whose presence grace is GRACE_S: a vanished partner is gone sooner."""
    with app_process(redis_server.url, PUSHSKIP_PRESENCE_GRACE_S=str(GRACE_S)) as (url, _proc):
        yield url


@pytest.fixture
async def presence_base(presence_server: str, redis: Redis) -> str:
    """`presence_server`'s URL, with Redis flushed for this test."""
    return presence_server


@contextlib.asynccontextmanager
async def demo_page(
    browser: Browser,
    url: str,
    *,
    viewport: ViewportSize | None = None,
    setup: Callable[[Page], Awaitable[Any]] | None = None,
    http_errors_expected: bool = False,
) -> AsyncIterator[Page]:
    """A fresh browser context (own sessionStorage) with the demo loaded.

    Fails on any JS error, and on any console error (such as an HTTP error
    status) unless `http_errors_expected`.
    """
    context = await browser.new_context(viewport=viewport or {"width": 1180, "height": 900})
    page = await context.new_page()
    if setup is not None:
        await setup(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        if http_errors_expected and msg.text.startswith("Failed to load resource"):
            return
        errors.append(msg.text)

    page.on("console", on_console)
    await page.goto(url)
    await page.wait_for_function("window.pushskipDemo !== undefined")
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"errors in the page: {errors}"


async def client_prop(page: Page, name: str, prop: str) -> Any:
    return await page.evaluate(CLIENT_PROP_JS, [name, prop])


def pane(page: Page, name: str) -> Any:
    return page.locator(f'[data-pane="{name}"]')


async def start_and_match(page: Page) -> tuple[str, str, str]:
    """Start A then B; both show 'matched' with the other. Returns (idA, idB, room)."""
    await pane(page, "A").locator("[data-action=start]").click()
    await pw_expect(pane(page, "A").get_by_test_id("state")).to_have_attribute(
        "data-state", "waiting"
    )
    await pane(page, "B").locator("[data-action=start]").click()
    for name, other in (("A", "B"), ("B", "A")):
        state = pane(page, name).get_by_test_id("state")
        await pw_expect(state).to_have_attribute("data-state", "matched")
        await pw_expect(state).to_contain_text(f"Matched with User {other}")
    id_a = await pane(page, "A").get_attribute("data-user-id")
    id_b = await pane(page, "B").get_attribute("data-user-id")
    room_a = await pane(page, "A").get_attribute("data-room")
    room_b = await pane(page, "B").get_attribute("data-room")
    assert id_a and id_b and id_a != id_b
    assert room_a and room_a == room_b
    return id_a, id_b, room_a


async def expect_transport(page: Page, name: str, transport: str) -> None:
    await pw_expect(pane(page, name).get_by_test_id("transport")).to_have_attribute(
        "data-transport", transport
    )


async def logged_seqs(page: Page, name: str) -> list[int]:
    """The seq of every event line in a pane's log, oldest first."""
    seqs = (
        await pane(page, name)
        .locator("[data-testid=log] li[data-seq]")
        .evaluate_all("items => items.map(li => Number(li.dataset.seq))")
    )
    return list(reversed(seqs))


async def logged_events(page: Page, name: str) -> list[tuple[str, int, str]]:
    """(epoch, seq, type) of every event line in a pane's log, oldest first."""
    rows = (
        await pane(page, name)
        .locator("[data-testid=log] li[data-seq]")
        .evaluate_all(
            "items => items.map(li =>"
            " [li.dataset.epoch ?? '', Number(li.dataset.seq), li.dataset.type])"
        )
    )
    return [(epoch, seq, kind) for epoch, seq, kind in reversed(rows)]


def reset_lines(page: Page, name: str) -> Any:
    """The pane's log lines that report an event log reset."""
    return pane(page, name).locator("[data-testid=log] li[data-reset]")


async def stored(page: Page, name: str) -> dict[str, Any]:
    """What the pane's client keeps in sessionStorage (token, lastSeq, epoch, wantMatch)."""
    value: dict[str, Any] = await page.evaluate(
        "name => JSON.parse(sessionStorage.getItem('pushskip-demo:' + name))", name
    )
    return value


async def forget_event_log(redis: Redis, user_id: str) -> None:
    """What expiry does to a user's log: stream, counter and epoch gone (the match stays)."""
    await redis.delete(keys.event_log(user_id), keys.event_seq(user_id), keys.event_epoch(user_id))


async def latest_skip(page: Page, name: str) -> tuple[float, str]:
    row = pane(page, name).locator("[data-testid=skips] li").first
    await pw_expect(row).to_be_visible()
    ms = float(await row.get_attribute("data-ms") or "nan")
    via = await row.get_attribute("data-via") or ""
    return ms, via


async def test_two_panes_match_each_other(browser: Browser, base: str) -> None:
    async with demo_page(browser, base + "/") as page:
        assert await page.locator("[data-testid=pane]").count() == 2
        await start_and_match(page)
        await expect_transport(page, "A", "websocket")
        await expect_transport(page, "B", "websocket")
        for name in ("A", "B"):
            assert await logged_seqs(page, name) == [1]
            await pw_expect(pane(page, name).locator("[data-action=skip]")).to_be_enabled()


async def test_skip_shows_partner_skipped_and_latency(browser: Browser, base: str) -> None:
    async with demo_page(browser, base + "/") as page:
        await start_and_match(page)
        await expect_transport(page, "B", "websocket")
        await pane(page, "A").locator("[data-action=skip]").click()

        state_b = pane(page, "B").get_by_test_id("state")
        await pw_expect(state_b).to_contain_text("Partner skipped")
        await pw_expect(state_b).to_contain_text("finding a new match")
        ms, via = await latest_skip(page, "B")
        print(f"skip -> notified over the WebSocket: {ms:.1f} ms")
        # Pushed, and measured (how fast is the benchmark's business, not a test's).
        assert via == "websocket"
        assert ms >= 0, ms
        row_text = await pane(page, "B").locator("[data-testid=skips] li").first.inner_text()
        assert "ms" in row_text and "A skipped" in row_text
        await pw_expect(pane(page, "B").get_by_test_id("polling-estimate")).to_contain_text("≈")
        log_b = pane(page, "B").get_by_test_id("log")
        await pw_expect(log_b.locator('li[data-type="partner-skipped"]')).to_have_count(1)
        # Both were re-queued; the rematch cooldown keeps them apart.
        await pw_expect(pane(page, "A").get_by_test_id("state")).to_have_attribute(
            "data-state", "waiting"
        )
        assert await logged_seqs(page, "B") == [1, 2]
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-after-skip.png"), full_page=True)
        await pw_expect(pane(page, "A").get_by_test_id("log")).to_contain_text("partner notified")


async def test_polling_fallback_while_socket_is_down(browser: Browser, base: str) -> None:
    async with demo_page(browser, base + "/") as page:
        await start_and_match(page)
        await expect_transport(page, "B", "websocket")
        await pane(page, "B").locator("[data-action=drop-socket]").check()
        await expect_transport(page, "B", "polling")

        started = time.monotonic()
        await pane(page, "A").locator("[data-action=skip]").click()
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text(
            "Partner skipped", timeout=1500
        )
        seen_after = time.monotonic() - started
        ms, via = await latest_skip(page, "B")
        print(
            f"skip -> notified by polling: {ms:.1f} ms (seen by the test after {seen_after:.2f} s)"
        )
        assert via == "polling"
        assert 0 <= ms < 1000, ms  # 500 ms polling: worst case one interval plus a request
        assert seen_after < 1.5, seen_after
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-polling-fallback.png"), full_page=True)

        # The socket comes back: resumes after lastSeq, polling stops, nothing twice.
        await pane(page, "B").locator("[data-action=drop-socket]").uncheck()
        await expect_transport(page, "B", "websocket")
        await page.wait_for_timeout(300)  # a poll in flight when the socket came back lands
        polls = (await client_prop(page, "B", "stats"))["polls"]
        await page.wait_for_timeout(1200)  # time for duplicates or stray polls to show
        stats = await client_prop(page, "B", "stats")
        assert stats["polls"] == polls, "polling went on after the socket came back"
        assert await logged_seqs(page, "B") == [1, 2]
        assert stats["delivered"] == 2
        await pw_expect(
            pane(page, "B").get_by_test_id("log").locator('li[data-type="partner-skipped"]')
        ).to_have_count(1)


async def test_reload_resumes_from_last_seq(browser: Browser, base: str) -> None:
    async with demo_page(browser, base + "/") as page:
        id_a, id_b, _room = await start_and_match(page)
        token_a = await page.evaluate("JSON.parse(sessionStorage.getItem('pushskip-demo:A')).token")
        stored_b = await stored(page, "B")
        assert stored_b["userId"] == id_b and stored_b["lastSeq"] == 1
        assert isinstance(stored_b["epoch"], str) and stored_b["epoch"]

        # Away from the page (same tab, so sessionStorage stays), A skips B.
        await page.goto("about:blank")
        async with httpx.AsyncClient(base_url=base) as http:
            got = await http.post(
                "/api/simple-matching/skip",
                json={"requeue": False},
                headers={"Authorization": f"Bearer {token_a}"},
            )
        assert got.status_code == 200 and got.json()["skipped"] is True, got.text

        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(base + "/")
        await page.wait_for_function("window.pushskipDemo !== undefined")
        await pw_expect(pane(page, "B").get_by_test_id("user-id")).to_have_text(id_b)
        await pw_expect(pane(page, "A").get_by_test_id("user-id")).to_have_text(id_a)
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        await expect_transport(page, "B", "websocket")
        resumed = [u for u in sockets if stored_b["token"] in u]
        assert resumed and "after=1" in resumed[0], sockets
        assert f"epoch={stored_b['epoch']}" in resumed[0], sockets
        _ms, via = await latest_skip(page, "B")
        assert via == "websocket, on resume"
        # The log survived the reload, and each event shows once.
        assert await logged_seqs(page, "B") == [1, 2]
        stats = await client_prop(page, "B", "stats")
        assert stats["delivered"] == 1  # only seq 2 was new to this page load
        await page.reload()
        await page.wait_for_function("window.pushskipDemo !== undefined")
        await expect_transport(page, "B", "websocket")
        await page.wait_for_timeout(300)
        assert await logged_seqs(page, "B") == [1, 2]
        assert (await client_prop(page, "B", "stats"))["delivered"] == 0
        await pw_expect(reset_lines(page, "B")).to_have_count(0)  # the same log all along


async def test_one_user_per_tab(browser: Browser, base: str) -> None:
    """?panes=1: two tabs of one browser are two users (sessionStorage is per tab)."""
    context = await browser.new_context()
    try:
        tabs = [await context.new_page(), await context.new_page()]
        for tab in tabs:
            await tab.goto(base + "/?panes=1")
            assert await tab.locator("[data-testid=pane]").count() == 1
            await tab.locator("[data-action=start]").click()
        for tab in tabs:
            await pw_expect(tab.get_by_test_id("state")).to_have_attribute("data-state", "matched")
        ids = [await tab.locator("[data-pane=A]").get_attribute("data-user-id") for tab in tabs]
        assert ids[0] != ids[1]
        await tabs[0].locator("[data-action=skip]").click()
        await pw_expect(tabs[1].get_by_test_id("state")).to_contain_text("Partner skipped")
        ms, via = await latest_skip(tabs[1], "A")
        assert via == "websocket" and ms >= 0
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def two_tabs(browser: Browser, url: str) -> AsyncIterator[list[Page]]:
    """Two tabs of one browser on `url` (one user per tab), each started and matched
    with the other. Fails on any JS or console error in either tab."""
    context = await browser.new_context()
    errors: list[str] = []
    try:
        tabs = [await context.new_page(), await context.new_page()]
        for tab in tabs:
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            await tab.goto(url)
            await tab.wait_for_function("window.pushskipDemo !== undefined")
            await tab.locator("[data-action=start]").click()
        for tab in tabs:
            state = tab.get_by_test_id("state")
            await pw_expect(state).to_have_attribute("data-state", "matched")
            await expect_transport(tab, "A", "websocket")
        rooms = [await pane(tab, "A").get_attribute("data-room") for tab in tabs]
        assert rooms[0] and rooms[0] == rooms[1], rooms
        yield tabs
    finally:
        await context.close()
    assert not errors, f"errors in the pages: {errors}"


async def partner_left_lines(tab: Page) -> list[str]:
    """The text of the partner-left lines in the tab's event log, oldest first."""
    texts = await tab.locator('[data-testid=log] li[data-type="partner-left"]').all_inner_texts()
    return list(reversed(texts))


async def seconds_until_partner_left(tab: Page, text: str, started: float) -> float:
    """Waits (up to 10 s) for the tab's state to say `text`; seconds since `started`.

    Looks every 20 ms (expect() backs off to 1 s between looks: too coarse to time)."""
    await tab.wait_for_function(
        "text => document.querySelector('[data-testid=state]').textContent.includes(text)",
        arg=text,
        polling=20,
        timeout=10_000,
    )
    return time.monotonic() - started


async def test_closing_a_tab_tells_the_partner_at_once(
    browser: Browser, presence_base: str
) -> None:
    """?panes=1: a tab that closes sends the leave by beacon on pagehide; the other tab
    shows "Partner left (left)" well before the presence grace would have."""
    async with two_tabs(browser, presence_base + "/?panes=1") as (closing, staying):
        started = time.monotonic()
        await closing.close(run_before_unload=False)  # fires pagehide, persisted false
        seconds = await seconds_until_partner_left(staying, "Partner left (left)", started)
        print(
            f"tab closed -> partner left shown in the other tab: {seconds * 1000:.0f} ms (beacon)"
        )
        assert seconds < 1.0, seconds
        # Left once: one partner-left, with its reason; the other tab looks again.
        lines = await partner_left_lines(staying)
        assert len(lines) == 1 and "partner left (left)" in lines[0], lines
        await pw_expect(staying.get_by_test_id("state")).to_contain_text("finding a new match")
        await staying.wait_for_timeout(GRACE_S * 1000 + 1200)  # presence adds nothing after it
        assert len(await partner_left_lines(staying)) == 1


async def test_closing_a_tab_without_the_beacon_waits_for_presence(
    browser: Browser, presence_base: str
) -> None:
    """leaveOnPageHide false: nothing is sent on close, the server's presence ends the
    match after its grace, and the other tab shows "Partner left (disconnected)"."""
    async with two_tabs(browser, presence_base + "/?panes=1") as (closing, staying):
        await closing.evaluate(
            "window.pushskipDemo.panes[0].client.options.leaveOnPageHide = false"
        )
        started = time.monotonic()
        await closing.close(run_before_unload=False)
        seconds = await seconds_until_partner_left(staying, "Partner left (disconnected)", started)
        print(
            f"tab closed -> partner left shown in the other tab: {seconds * 1000:.0f} ms (presence)"
        )
        # Not before the grace; within it plus a sweep (1 s) and some slack.
        assert GRACE_S <= seconds < GRACE_S + 2.5, seconds
        lines = await partner_left_lines(staying)
        assert len(lines) == 1 and "partner left (disconnected)" in lines[0], lines


async def test_reload_of_a_stored_session_sends_no_leave(
    browser: Browser, presence_base: str
) -> None:
    """?panes=1&resume=1 (a client with a storage): a reload resumes the session inside
    the grace and the match goes on, so no leave is sent on its pagehide; a close is
    then told by presence, after the grace (the trade-off, see pushskip.js)."""
    async with two_tabs(browser, presence_base + "/?panes=1&resume=1") as (reloading, staying):
        user = await pane(reloading, "A").get_attribute("data-user-id")
        room = await pane(reloading, "A").get_attribute("data-room")
        await reloading.reload()
        await reloading.wait_for_function("window.pushskipDemo !== undefined")
        await pw_expect(pane(reloading, "A").get_by_test_id("user-id")).to_have_text(user or "")
        await expect_transport(reloading, "A", "websocket")
        await pw_expect(pane(reloading, "A")).to_have_attribute("data-room", room or "")
        # Past the grace: the match is still on in both tabs, nobody was told anything.
        await staying.wait_for_timeout(GRACE_S * 1000 + 1200)
        for tab in (reloading, staying):
            await pw_expect(tab.get_by_test_id("state")).to_have_attribute("data-state", "matched")
            await pw_expect(pane(tab, "A")).to_have_attribute("data-room", room or "")
            assert await partner_left_lines(tab) == []
        assert await logged_seqs(staying, "A") == [1]

        started = time.monotonic()
        await reloading.close(run_before_unload=False)
        seconds = await seconds_until_partner_left(staying, "Partner left (disconnected)", started)
        print(
            f"stored-session tab closed -> partner left shown: {seconds * 1000:.0f} ms (presence)"
        )
        assert GRACE_S <= seconds < GRACE_S + 2.5, seconds


# PushskipClient's pagehide leave, with a fake sendBeacon and fetch (test_leave_on_pagehide_unit).
PAGEHIDE_JS = """async () => {
    const { PushskipClient } = await import('/pushskip.js');
    const sent = [];
    let beaconAnswer = true;
    Object.defineProperty(navigator, 'sendBeacon', { configurable: true, value: (url, body) => {
        sent.push(['beacon', new URL(url).pathname, body]);
        return beaconAnswer;
    } });
    const realFetch = window.fetch;
    window.fetch = async (url, init) => {
        sent.push(['fetch', new URL(url).pathname, init.body, init.keepalive, init.method]);
        return new Response('{"success": true}');
    };
    const storage = { getItem: () => null, setItem() {}, removeItem() {} };
    const hide = (persisted) =>
        window.dispatchEvent(new PageTransitionEvent('pagehide', { persisted }));
    const make = (options, state, token) => {
        const c = new PushskipClient(options);
        c.token = token;
        c.state = state;
        c._watchPageHide(true);  // what start() and enqueue() do
        return c;
    };
    const out = {};
    const step = (name, fn) => { sent.length = 0; fn(); out[name] = sent.slice(); };
    try {
        let c = make({}, 'idle', 'idle-token');
        step('idle', () => hide(false));
        c.state = 'matched';
        step('bfcache', () => hide(true));
        step('matched', () => hide(false));
        step('twice', () => hide(false));
        c.stop();

        c = make({ socket: false }, 'matched', 'drop-token');
        c.started = true;
        c._ws = { close() {} };
        step('socketDrop', () => c._dropSocket('unit test'));
        c.stop();
        step('afterStop', () => hide(false));

        c = make({ storage }, 'matched', 'stored-token');
        step('storedAuto', () => hide(false));
        c.stop();
        c = make({ storage, leaveOnPageHide: true }, 'waiting', 'stored-true-token');
        step('storedTrue', () => hide(false));
        c.stop();
        c = make({ leaveOnPageHide: false }, 'matched', 'off-token');
        step('off', () => hide(false));
        c.stop();
        c = make({}, 'idle', 'wanting-token');
        c.wantMatch = true;  // an enqueue in flight, or about to re-enqueue
        step('wantMatch', () => hide(false));
        c.stop();
        beaconAnswer = false;  // the beacon queue refused it
        c = make({}, 'matched', 'fallback-token');
        step('fallback', () => hide(false));
        out.fallbackVia = c.timings.pageHideLeave.via;
        c.stop();

        // partner-left's reason reaches the 'state' handlers.
        c = new PushskipClient({});
        c.token = 'reason-token';
        const states = [];
        c.on('state', ({ state, reason, event }) =>
            states.push([state, reason, event && event.reason]));
        const ws = { send() {}, close() {} };
        c._ws = ws;
        const send = (m) => c._onSocketMessage(ws, { data: JSON.stringify(m) });
        const m1 = { roomName: 'r1', user1: 'u', user2: 'v', partnerId: 'v', matchedAt: 1 };
        send({ type: 'hello', userId: 'u', state: 'idle', match: null, lastSeq: 0, epoch: null });
        send({ type: 'matched', seq: 1, epoch: 'E', at: 1, match: m1 });
        send({ type: 'partner-left', seq: 2, epoch: 'E', at: 2, roomName: 'r1',
               reason: 'disconnected' });
        out.states = states;
        out.lastNotified = c.timings.lastNotified.reason;
        c.stop();
    } finally {
        delete navigator.sendBeacon;
        window.fetch = realFetch;
    }
    return out;
}"""


async def test_leave_on_pagehide_unit(browser: Browser, base: str) -> None:
    """pushskip.js's pagehide leave, with a fake sendBeacon: only when the page really
    goes away, only when waiting or matched, once, never on a socket drop, never for a
    stored session unless asked; a refused beacon falls back to a keepalive fetch."""
    async with demo_page(browser, base + "/?panes=1") as page:
        out = await page.evaluate(PAGEHIDE_JS)
    leave = "/api/simple-matching/leave"
    assert out["idle"] == []
    assert out["bfcache"] == []
    assert out["matched"] == [["beacon", leave, '{"token":"idle-token"}']]
    assert out["twice"] == []
    assert out["socketDrop"] == []
    assert out["afterStop"] == []
    assert out["storedAuto"] == []
    assert out["storedTrue"] == [["beacon", leave, '{"token":"stored-true-token"}']]
    assert out["off"] == []
    assert out["wantMatch"] == [["beacon", leave, '{"token":"wanting-token"}']]
    assert out["fallback"] == [
        ["beacon", leave, '{"token":"fallback-token"}'],
        ["fetch", leave, '{"token":"fallback-token"}', True, "POST"],
    ]
    assert out["fallbackVia"] == "fetch"
    assert out["states"] == [["matched", "matched", None], ["idle", "partner-left", "disconnected"]]
    assert out["lastNotified"] == "disconnected"


async def test_phone_layout_has_no_horizontal_scroll(browser: Browser, base: str) -> None:
    async with demo_page(browser, base + "/", viewport={"width": 375, "height": 812}) as page:
        await start_and_match(page)
        await pane(page, "A").locator("[data-action=skip]").click()
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        await latest_skip(page, "B")
        widths = await page.evaluate(
            "({scroll: document.documentElement.scrollWidth,"
            " client: document.documentElement.clientWidth,"
            " body: document.body.scrollWidth})"
        )
        assert widths["client"] == 375
        assert widths["scroll"] <= widths["client"], widths
        assert widths["body"] <= widths["client"], widths
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-phone.png"), full_page=True)


async def test_server_closed_socket_reconnects_with_after(browser: Browser, base: str) -> None:
    """The server closes B's socket (1001): B polls, reconnects on its own with after=lastSeq."""
    routes: list[WebSocketRoute] = []

    def proxy(route: WebSocketRoute) -> None:
        route.connect_to_server()  # a pass-through we can close from the "server" side
        routes.append(route)

    async with demo_page(
        browser, base + "/", setup=lambda page: page.route_web_socket("**/ws?*", proxy)
    ) as page:
        await start_and_match(page)
        await expect_transport(page, "B", "websocket")
        token_b = await page.evaluate("JSON.parse(sessionStorage.getItem('pushskip-demo:B')).token")
        first = [r for r in routes if token_b in r.url]
        assert len(first) == 1
        await first[0].close(code=1001, reason="Server shutting down; reconnect with after=")
        await expect_transport(page, "B", "polling")
        await expect_transport(page, "B", "websocket")  # backoff: attempt 0 waits < 0.5 s
        again = [r for r in routes if token_b in r.url]
        assert len(again) == 2 and "after=1" in again[1].url, [r.url for r in again]
        await pane(page, "A").locator("[data-action=skip]").click()
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        _, via = await latest_skip(page, "B")
        assert via == "websocket"
        assert await logged_seqs(page, "B") == [1, 2]
        await pw_expect(pane(page, "B").get_by_test_id("log")).to_contain_text("reconnecting in")


async def test_client_handles_401_429_503_and_keeps_waiting_alive(
    browser: Browser, base: str
) -> None:
    """A stale token gets a new session; 429 and 503 are retried; waiting re-enqueues.

    Actions over HTTP (?actions=http); test_socket_action_429_503_replies_are_retried
    is the same over the socket."""
    # resume=1: the one pane keeps its session in sessionStorage (as both panes of "/" do).
    url = base + "/?panes=1&resume=1&actions=http"
    async with demo_page(browser, url, http_errors_expected=True) as page:
        await page.evaluate(
            """sessionStorage.setItem('pushskip-demo:A', JSON.stringify(
                {userId: 'u_gone', token: 'not-a-valid-token', lastSeq: 7, wantMatch: false}))"""
        )
        answers = [(429, {"Retry-After": "0"}), (503, {})]
        enqueue_calls: list[int] = []

        async def flaky_enqueue(route: Route) -> None:
            enqueue_calls.append(len(enqueue_calls))
            if answers:
                status, headers = answers.pop(0)
                await route.fulfill(
                    status=status,
                    headers={"Content-Type": "application/json", **headers},
                    body='{"success": false, "error": "try again"}',
                )
            else:
                await route.continue_()

        await page.route("**/api/simple-matching/enqueue", flaky_enqueue)
        await page.reload()
        await page.wait_for_function("window.pushskipDemo !== undefined")
        user_id = pane(page, "A").get_by_test_id("user-id")
        await pw_expect(user_id).to_have_text(re.compile(r"^u_"))
        await pw_expect(user_id).not_to_have_text("u_gone")
        await expect_transport(page, "A", "websocket")
        assert await client_prop(page, "A", "lastSeq") == 0
        await pane(page, "A").locator("[data-action=start]").click()
        await page.wait_for_function(
            "window.pushskipDemo.panes[0].client.state === 'waiting'", timeout=5000
        )
        assert len(enqueue_calls) == 3  # 429, 503, then the real one
        await pw_expect(pane(page, "A").get_by_test_id("log")).to_contain_text("retrying in")

        # Keep-alive: a client that waits re-enqueues (every 10 s by default; 150 ms here).
        # A leaves first, so the extra client below has nobody to match and keeps waiting.
        await pane(page, "A").locator("[data-action=leave]").click()
        await page.wait_for_function("window.pushskipDemo.panes[0].client.state === 'idle'")
        count = await page.evaluate(
            """async () => {
                const { PushskipClient } = await import('/pushskip.js');
                const c = new PushskipClient({ keepAliveMs: 150, actionsOverSocket: false });
                let calls = 0;
                const realFetch = window.fetch;
                window.fetch = (url, init) => {
                    if (String(url).endsWith('/enqueue')) calls++;
                    return realFetch(url, init);
                };
                try {
                    await c.start();
                    await c.enqueue();
                    await new Promise(r => setTimeout(r, 700));
                    return { calls, state: c.state };
                } finally {
                    c.stop();
                    window.fetch = realFetch;
                }
            }"""
        )
        assert count["state"] == "waiting" and count["calls"] >= 3, count


# Drives one PushskipClient with a fake socket and fake polls (test_client_epoch_gate_unit).
EPOCH_GATE_JS = """async () => {
    const { PushskipClient } = await import('/pushskip.js');
    const store = new Map();
    const storage = {
        getItem: (k) => store.get(k) ?? null,
        setItem: (k, v) => store.set(k, v),
        removeItem: (k) => store.delete(k),
    };
    const c = new PushskipClient({ storage, storageKey: 'unit' });
    c.token = 'tok';
    const out = { delivered: [], resets: [] };
    c.on('event', (e, meta) =>
        out.delivered.push([e.epoch, e.seq, e.type, meta.replay, meta.via]));
    c.on('reset', (r) => out.resets.push([r.previous, r.epoch, r.state, r.lastSeq, r.via]));
    const ws = { send() {}, close() {} };
    c._ws = ws;
    const send = (m) => c._onSocketMessage(ws, { data: JSON.stringify(m) });
    const hello = (extra) => send({ type: 'hello', userId: 'u', state: 'idle', match: null,
                                    lastSeq: 0, pollIntervalMs: 500, ...extra });
    const m1 = { roomName: 'r1', user1: 'u', user2: 'v', partnerId: 'v', matchedAt: 1 };
    const m2 = { ...m1, roomName: 'r2' };
    out.url0 = c._wsUrl();

    hello({ epoch: null });                        // no log yet
    send({ type: 'matched', seq: 1, epoch: 'E1', at: 1, match: m1 });  // adopted
    send({ type: 'matched', seq: 1, epoch: 'E1', at: 1, match: m1 });  // duplicate
    send({ type: 'partner-left', seq: 2, epoch: 'E2', at: 2, roomName: 'r1' });  // no reset
    out.afterForeign = [c.state, c.epoch, c.lastSeq, c.stats.otherEpoch];
    out.url1 = c._wsUrl();
    hello({ reset: true, epoch: 'E2', state: 'matched', match: m2, lastSeq: 2 });
    send({ type: 'partner-left', seq: 1, epoch: 'E2', at: 2, roomName: 'r1', reason: 'left' });
    send({ type: 'matched', seq: 2, epoch: 'E2', at: 3, match: m2 });
    const skipped = { type: 'partner-skipped', seq: 3, epoch: 'E2', at: 4, roomName: 'r2' };
    send(skipped);
    send(skipped);
    out.afterReset = [c.state, c.epoch, c.lastSeq, JSON.parse(store.get('unit'))];

    // Polls, with the socket gone: answers come from a fake fetch.
    c._dropSocket('unit test');
    c._stopPolling();
    const asked = [];
    let answer = null;
    c._fetch = async (method, path) => {
        asked.push(path);
        const body = await answer;
        return { ok: true, status: 200, statusText: 'OK', headers: new Headers(),
                 json: async () => body };
    };
    const poll = async (body) => {
        answer = body;
        c._polling = true;
        await c._poll();
        c._stopPolling();
    };
    const ev = (seq, epoch, type, more = {}) => ({ type, seq, epoch, at: 5, ...more });
    await poll({ success: true, reset: true, epoch: 'E3', state: 'waiting', match: null,
                 lastSeq: 1, events: [ev(1, 'E3', 'partner-skipped', { roomName: 'r2' })] });
    await poll({ success: true, epoch: 'E3', lastSeq: 2,
                 events: [ev(1, 'E3', 'partner-skipped', { roomName: 'r2' }),
                          ev(2, 'E3', 'matched', { match: { ...m1, roomName: 'r3' } })] });
    out.afterPolls = [c.state, c.epoch, c.lastSeq];

    // A poll out while the socket resets us to E4: its answer is about E3, unused.
    let release;
    answer = new Promise((r) => { release = r; });
    c._polling = true;
    const pending = c._poll();
    c._ws = ws;
    hello({ reset: true, epoch: 'E4', state: 'idle', match: null, lastSeq: 0 });
    release({ success: true, reset: true, epoch: 'E4', state: 'matched', match: m1,
              lastSeq: 1, events: [ev(1, 'E4', 'matched', { match: m1 })] });
    await pending;
    out.afterStale = [c.state, c.epoch, c.lastSeq, c.stats.resets];
    out.asked = asked;
    c.stop();

    // A stored blob: resumes with its epoch; one without an epoch starts from 0.
    const again = new PushskipClient({ storage, storageKey: 'unit' });
    out.reloaded = [again.epoch, again.lastSeq, again._wsUrl()];
    store.set('old', JSON.stringify({ userId: 'u', token: 't', lastSeq: 9 }));
    const old = new PushskipClient({ storage, storageKey: 'old' });
    out.legacy = [old.epoch, old.lastSeq];
    return out;
}"""


async def test_client_epoch_gate_unit(browser: Browser, base: str) -> None:
    """pushskip.js alone, fed by a fake socket and fake polls: seqs count per epoch.

    An event is delivered once per epoch and seq; an event of another epoch
    without a reset is never delivered; a reset starts the count over with the
    state it gives; a poll answer asked before the socket moved to another log
    is not used.
    """
    async with demo_page(browser, base + "/?panes=1") as page:
        result = await page.evaluate(EPOCH_GATE_JS)
    assert "epoch=" not in result["url0"] and "after=0" in result["url0"]
    assert result["afterForeign"] == ["matched", "E1", 1, 1]
    assert "after=1" in result["url1"] and "epoch=E1" in result["url1"]
    assert result["delivered"] == [
        ["E1", 1, "matched", False, "websocket"],
        ["E2", 1, "partner-left", True, "websocket"],
        ["E2", 2, "matched", True, "websocket"],
        ["E2", 3, "partner-skipped", False, "websocket"],
        ["E3", 1, "partner-skipped", True, "polling"],
        ["E3", 2, "matched", False, "polling"],
    ]
    state, epoch, last, saved = result["afterReset"]
    assert (state, epoch, last) == ("idle", "E2", 3)
    assert saved["epoch"] == "E2" and saved["lastSeq"] == 3
    assert result["afterPolls"] == ["matched", "E3", 2]
    assert result["afterStale"] == ["idle", "E4", 0, 3]
    assert result["resets"] == [
        ["E1", "E2", "matched", 2, "websocket"],
        ["E2", "E3", "waiting", 1, "polling"],
        ["E3", "E4", "idle", 0, "websocket"],
    ]
    assert result["asked"] == [
        "/api/simple-matching/events?after=3&epoch=E2",
        "/api/simple-matching/events?after=1&epoch=E3",
        "/api/simple-matching/events?after=2&epoch=E3",
    ]
    assert result["reloaded"][:2] == ["E4", 0]
    assert "after=0" in result["reloaded"][2] and "epoch=E4" in result["reloaded"][2]
    assert result["legacy"] == [None, 0]


async def test_reload_after_the_log_epoch_changed_resets_once(
    browser: Browser, base: str, redis: Redis
) -> None:
    """B's log expires while B is away and a new one starts: the reload resets, nothing twice."""
    async with demo_page(browser, base + "/") as page:
        _id_a, id_b, _room = await start_and_match(page)
        token_a = (await stored(page, "A"))["token"]
        before = await stored(page, "B")
        assert before["lastSeq"] == 1 and before["epoch"]

        await page.goto("about:blank")
        await forget_event_log(redis, id_b)
        async with httpx.AsyncClient(base_url=base) as http:
            got = await http.post(
                "/api/simple-matching/skip",
                json={"requeue": False},
                headers={"Authorization": f"Bearer {token_a}"},
            )
            assert got.status_code == 200 and got.json()["skipped"] is True, got.text
            # The new log: partner-skipped is #1 of a new epoch.
            log = await http.get(
                "/api/simple-matching/events?after=0",
                headers={"Authorization": f"Bearer {before['token']}"},
            )
        new_epoch = log.json()["epoch"]
        assert new_epoch and new_epoch != before["epoch"], log.text
        assert [(e["seq"], e["type"]) for e in log.json()["events"]] == [(1, "partner-skipped")]

        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(base + "/")
        await page.wait_for_function("window.pushskipDemo !== undefined")
        await pw_expect(pane(page, "B").get_by_test_id("user-id")).to_have_text(id_b)
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        await expect_transport(page, "B", "websocket")
        resumed = [u for u in sockets if before["token"] in u]
        assert resumed and "after=1" in resumed[0] and f"epoch={before['epoch']}" in resumed[0]
        await pw_expect(reset_lines(page, "B")).to_have_count(1)
        assert await reset_lines(page, "B").get_attribute("data-reset") == new_epoch
        await pw_expect(reset_lines(page, "B")).to_have_class(re.compile(r"\bwarn\b"))
        await pw_expect(reset_lines(page, "B")).to_contain_text("event log reset")
        assert await logged_events(page, "B") == [
            (before["epoch"], 1, "matched"),
            (new_epoch, 1, "partner-skipped"),
        ]
        stats = await client_prop(page, "B", "stats")
        assert stats["delivered"] == 1 and stats["resets"] == 1, stats
        assert stats["otherEpoch"] == 0, stats
        _ms, via = await latest_skip(page, "B")
        assert via == "websocket, on resume"
        after = await stored(page, "B")
        assert after["epoch"] == new_epoch and after["lastSeq"] == 1, after
        await pw_expect(reset_lines(page, "A")).to_have_count(0)  # A's log was not touched

        # Once more: the same epoch now, so no reset and nothing new.
        sockets.clear()
        await page.reload()
        await page.wait_for_function("window.pushskipDemo !== undefined")
        await expect_transport(page, "B", "websocket")
        await page.wait_for_timeout(300)
        resumed = [u for u in sockets if before["token"] in u]
        assert resumed and "after=1" in resumed[0] and f"epoch={new_epoch}" in resumed[0]
        stats = await client_prop(page, "B", "stats")
        assert stats["delivered"] == 0 and stats["resets"] == 0, stats
        await pw_expect(reset_lines(page, "B")).to_have_count(1)  # the line from before
        assert [seq for _, seq, _ in await logged_events(page, "B")] == [1, 1]


async def test_polling_pane_gets_the_reset_from_the_events_answer(
    browser: Browser, base: str, redis: Redis
) -> None:
    """B polls (socket dropped) when its log starts anew: the events answer resets it."""
    async with demo_page(browser, base + "/") as page:
        _id_a, id_b, _room = await start_and_match(page)
        old_epoch = await client_prop(page, "B", "epoch")
        await pane(page, "B").locator("[data-action=drop-socket]").check()
        await expect_transport(page, "B", "polling")

        await forget_event_log(redis, id_b)
        await pane(page, "A").locator("[data-action=skip]").click()
        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        await pw_expect(reset_lines(page, "B")).to_have_count(1)
        await pw_expect(reset_lines(page, "B")).to_contain_text("via polling")
        new_epoch = await client_prop(page, "B", "epoch")
        assert new_epoch and new_epoch != old_epoch
        assert await logged_events(page, "B") == [
            (old_epoch, 1, "matched"),
            (new_epoch, 1, "partner-skipped"),
        ]
        _ms, via = await latest_skip(page, "B")
        assert via == "polling"

        # The socket comes back in the new epoch: no second reset, nothing twice.
        await pane(page, "B").locator("[data-action=drop-socket]").uncheck()
        await expect_transport(page, "B", "websocket")
        await page.wait_for_timeout(800)
        stats = await client_prop(page, "B", "stats")
        assert stats["resets"] == 1 and stats["delivered"] == 2 and stats["otherEpoch"] == 0, stats
        assert len(await logged_events(page, "B")) == 2


def wipe_redis_data(server: EmbeddedRedis) -> None:
    """Stop `server`, delete what it keeps on disk, start it again: a Redis that lost its data."""
    server.stop()
    for path in server.directory.iterdir():
        if path.name == "appendonlydir" or path.suffix in (".aof", ".rdb"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    server.start()


async def test_redis_restart_without_data_resets_open_panes(
    browser: Browser, own_redis: EmbeddedRedis, chromium_executable: str
) -> None:
    """Redis comes back empty under open pages: each pane logs a reset, the users meet
    again, and a skip still reaches the partner, each event once."""
    with app_process(own_redis.url) as (url, _proc):
        async with demo_page(browser, url + "/", http_errors_expected=True) as page:
            _id_a, _id_b, room = await start_and_match(page)
            await expect_transport(page, "A", "websocket")
            await expect_transport(page, "B", "websocket")
            old = {name: await client_prop(page, name, "epoch") for name in ("A", "B")}
            assert all(old.values()), old

            wipe_redis_data(own_redis)

            for name in ("A", "B"):
                await pw_expect(reset_lines(page, name)).to_have_count(1, timeout=20_000)
                await pw_expect(reset_lines(page, name)).to_contain_text("via websocket")
            # The match was lost with the data: both want one, so both queue again
            # and (no cooldown survived either) meet each other in a new room.
            for name, other in (("A", "B"), ("B", "A")):
                state = pane(page, name).get_by_test_id("state")
                await pw_expect(state).to_have_attribute("data-state", "matched", timeout=20_000)
                await pw_expect(state).to_contain_text(f"Matched with User {other}")
            new_room = await pane(page, "B").get_attribute("data-room")
            assert new_room and new_room != room
            await expect_transport(page, "B", "websocket")

            await pane(page, "A").locator("[data-action=skip]").click()
            await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text(
                "Partner skipped"
            )
            _ms, via = await latest_skip(page, "B")
            assert via == "websocket"
            new_epoch = await client_prop(page, "B", "epoch")
            assert new_epoch and new_epoch != old["B"]
            assert await logged_events(page, "B") == [
                (old["B"], 1, "matched"),
                (new_epoch, 1, "matched"),
                (new_epoch, 2, "partner-skipped"),
            ]
            await page.wait_for_timeout(500)
            for name in ("A", "B"):
                stats = await client_prop(page, name, "stats")
                assert stats["resets"] == 1 and stats["otherEpoch"] == 0, (name, stats)
            await pw_expect(reset_lines(page, "B")).to_have_count(1)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "demo-log-reset.png"), full_page=True)


# ---- actions over the socket ------------------------------------------------------

SIMPLE_MATCHING = "/api/simple-matching/"


def watch_action_posts(page: Page) -> list[str]:
    """The paths of the page's HTTP POSTs to /api/simple-matching/..., as they are made."""
    posts: list[str] = []

    def on_request(request: Any) -> None:
        path = request.url.split("?")[0]
        if request.method == "POST" and SIMPLE_MATCHING in path:
            posts.append(path[path.index(SIMPLE_MATCHING) :])

    page.on("request", on_request)
    return posts


def watch_socket_actions(page: Page) -> list[dict[str, Any]]:
    """Every action message the page sends on any of its WebSockets."""
    sent: list[dict[str, Any]] = []

    def on_frame(payload: str | bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") in ("enqueue", "skip", "leave"):
            sent.append(message)

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))
    return sent


def action_lines(page: Page, name: str, action: str) -> Any:
    """The lines of a pane's log that an action's answer wrote (data-via: socket | http)."""
    return pane(page, name).locator(f'[data-testid=log] li[data-action="{action}"]')


async def test_demo_skip_goes_over_the_socket_while_it_is_open(
    browser: Browser, base: str
) -> None:
    """With its socket open, a pane's actions (start, skip, the re-enqueue) go on the
    socket: no HTTP POST is made, the log says "via socket", and the partner learns it."""
    async with demo_page(browser, base + "/") as page:
        posts = watch_action_posts(page)
        frames = watch_socket_actions(page)
        _id_a, _id_b, room = await start_and_match(page)
        await expect_transport(page, "A", "websocket")
        await pane(page, "A").locator("[data-action=skip]").click()

        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        _ms, via = await latest_skip(page, "B")
        assert via == "websocket"
        line = action_lines(page, "A", "skip")
        await pw_expect(line).to_have_count(1)
        await pw_expect(line).to_have_attribute("data-via", "socket")
        await pw_expect(line).to_contain_text(
            re.compile(r"skip sent via socket, reply in [\d.]+ ms")
        )
        last_skip = (await client_prop(page, "A", "timings"))["lastSkip"]
        assert last_skip["via"] == "socket" and last_skip["roomName"] == room, last_skip
        assert last_skip["rttMs"] >= 0
        # Both re-enqueued after the skip (A by its skip, B by itself), on their sockets.
        await page.wait_for_function(
            "window.pushskipDemo.panes.every(p => p.client.state === 'waiting')"
        )
        stats = await client_prop(page, "B", "stats")
        assert stats["actionsViaSocket"] >= 2 and stats["actionsViaHttp"] == 0, stats
        stats = await client_prop(page, "A", "stats")
        assert stats["actionsViaSocket"] >= 2 and stats["actionsViaHttp"] == 0, stats
        assert stats["repliesLost"] == 0, stats
        await pw_expect(pane(page, "A").get_by_test_id("stats")).to_contain_text("0 via http")
        skips = [m for m in frames if m["type"] == "skip"]
        assert len(skips) == 1 and skips[0]["requeue"] is True and skips[0]["id"], frames
        assert len({m["id"] for m in frames}) == len(frames), frames  # every id its own
        assert posts == [], posts  # no HTTP POST to /api/simple-matching/... at all


async def test_demo_skip_goes_over_http_while_the_socket_is_dropped(
    browser: Browser, base: str
) -> None:
    """With its socket dropped, a pane's skip is POST /skip (the log says "via http");
    once the socket is back, its next action goes on the socket again."""
    async with demo_page(browser, base + "/") as page:
        await start_and_match(page)
        await pane(page, "A").locator("[data-action=drop-socket]").check()
        await expect_transport(page, "A", "polling")
        posts = watch_action_posts(page)
        frames = watch_socket_actions(page)
        await pane(page, "A").locator("[data-action=skip]").click()

        await pw_expect(pane(page, "B").get_by_test_id("state")).to_contain_text("Partner skipped")
        _ms, via = await latest_skip(page, "B")
        assert via == "websocket"  # B's socket is open: the news is pushed all the same
        line = action_lines(page, "A", "skip")
        await pw_expect(line).to_have_attribute("data-via", "http")
        await pw_expect(line).to_contain_text(re.compile(r"skip sent via http, reply in [\d.]+ ms"))
        assert (await client_prop(page, "A", "timings"))["lastSkip"]["via"] == "http"
        assert posts.count(SIMPLE_MATCHING + "skip") == 1, posts
        assert not [m for m in frames if m["type"] == "skip"], frames

        # The socket comes back: the leave goes on it.
        await pane(page, "A").locator("[data-action=drop-socket]").uncheck()
        await expect_transport(page, "A", "websocket")
        await pw_expect(pane(page, "A").locator("[data-action=leave]")).to_be_enabled()
        await pane(page, "A").locator("[data-action=leave]").click()
        leave = action_lines(page, "A", "leave")
        await pw_expect(leave).to_have_attribute("data-via", "socket")
        await pw_expect(leave).to_contain_text("leave sent via socket")
        assert SIMPLE_MATCHING + "leave" not in posts, posts
        assert [m["type"] for m in frames] == ["leave"], frames


async def test_socket_action_429_503_replies_are_retried(browser: Browser, base: str) -> None:
    """A 429 or 503 reply to an action sent on the socket is retried with backoff, as over
    HTTP, each time with a new id and never over HTTP; keep-alive enqueues use the socket."""
    answers = [429, 503]
    enqueues: list[str] = []

    def proxy(route: WebSocketRoute) -> None:
        server = route.connect_to_server()

        def from_page(message: str | bytes) -> None:
            data = json.loads(message) if isinstance(message, str) else None
            if isinstance(data, dict) and data.get("type") == "enqueue":
                enqueues.append(data["id"])
                if answers:
                    reply = {
                        "type": "reply",
                        "id": data["id"],
                        "status": answers.pop(0),
                        "body": {"success": False, "error": "try again"},
                    }
                    route.send(json.dumps(reply))
                    return
            server.send(message)

        route.on_message(from_page)

    async with demo_page(
        browser, base + "/?panes=1", setup=lambda page: page.route_web_socket("**/ws?*", proxy)
    ) as page:
        posts = watch_action_posts(page)
        await pane(page, "A").locator("[data-action=start]").click()
        await page.wait_for_function(
            "window.pushskipDemo.panes[0].client.state === 'waiting'", timeout=5000
        )
        assert len(enqueues) == 3 and len(set(enqueues)) == 3, enqueues  # 429, 503, the real one
        await pw_expect(pane(page, "A").get_by_test_id("log")).to_contain_text(
            "429 over the socket, retrying in"
        )
        stats = await client_prop(page, "A", "stats")
        assert stats["actionsViaSocket"] == 1 and stats["actionsViaHttp"] == 0, stats

        # Keep-alive: a waiting client re-enqueues (every 150 ms here), on its socket.
        await pane(page, "A").locator("[data-action=leave]").click()
        await page.wait_for_function("window.pushskipDemo.panes[0].client.state === 'idle'")
        enqueues.clear()
        result = await page.evaluate(
            """async () => {
                const { PushskipClient } = await import('/pushskip.js');
                const c = new PushskipClient({ keepAliveMs: 150 });
                try {
                    await c.start();
                    const first = await c.enqueue();
                    await new Promise(r => setTimeout(r, 700));
                    return { via: first.via, state: c.state, stats: c.stats };
                } finally {
                    c.stop();
                }
            }"""
        )
        assert result["via"] == "socket" and result["state"] == "waiting", result
        assert result["stats"]["actionsViaSocket"] >= 3, result
        assert result["stats"]["actionsViaHttp"] == 0, result
        assert len(enqueues) >= 3, enqueues
        assert posts == [], posts


# Drives PushskipClients over fake sockets and a fake fetch (test_client_socket_actions_unit).
SOCKET_ACTIONS_JS = """async () => {
    const { PushskipClient } = await import('/pushskip.js');
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const sockets = [];
    class FakeSocket {
        constructor(url) {
            this.url = url;
            this.readyState = 1;
            this.sent = [];
            sockets.push(this);
        }
        send(text) { this.sent.push(JSON.parse(text)); }
        close() { this.readyState = 3; }
    }
    const fetched = [];
    const answers = {
        status: { success: true, state: 'waiting', match: null, lastSeq: 1, epoch: 'E' },
        events: { success: true, events: [], lastSeq: 1, epoch: 'E' },
        enqueue: { success: true, status: 'waiting' },
        skip: { success: true, skipped: true, roomName: 'r1', status: 'waiting', match: null },
    };
    const fakeFetch = async (method, path, body) => {
        const route = path.split('?')[0].split('/').pop();
        fetched.push([method, route]);
        const answer = answers[route];
        return { ok: true, status: 200, statusText: 'OK', headers: new Headers(),
                 json: async () => answer };
    };
    const m1 = { roomName: 'r1', user1: 'u', user2: 'v', partnerId: 'v', matchedAt: 1 };
    const clients = [];
    // A started client whose socket said hello and was matched in room r1.
    const make = (options = {}) => {
        const c = new PushskipClient({ reconnectBaseMs: 20, ...options });
        clients.push(c);
        c.token = 'tok';
        c.userId = 'u';
        c._fetch = fakeFetch;
        c.started = true;
        c._connect();
        const ws = sockets[sockets.length - 1];
        const deliver = (m) => ws.onmessage({ data: JSON.stringify(m) });
        deliver({ type: 'hello', userId: 'u', state: 'idle', match: null, lastSeq: 0,
                  epoch: 'E', pollIntervalMs: 500 });
        deliver({ type: 'matched', seq: 1, epoch: 'E', at: 1, match: m1 });
        return { c, ws, deliver };
    };
    const settle = (p) => p.then(
        (r) => ({ ok: r }),
        (e) => ({ err: { status: e.status, via: e.via ?? null, unknown: e.outcomeUnknown === true,
                         message: e.message }, reconciled: e.reconciled }),
    );
    const sentOf = (type) => sockets.flatMap((s) => s.sent).filter((m) => m.type === type);
    const posted = (route) => fetched.filter(([m, r]) => m === 'POST' && r === route).length;
    const RealWebSocket = window.WebSocket;
    window.WebSocket = FakeSocket;
    const out = {};
    try {
        // 1. A reply resolves the skip, via the socket; a second reply to it is ignored.
        let { c, ws, deliver } = make();
        let p = c.skip();
        const [msg] = ws.sent;
        deliver({ type: 'reply', id: msg.id, status: 200, body: answers.skip });
        let r = await p;
        deliver({ type: 'reply', id: msg.id, status: 200, body: answers.skip });
        out.replied = { msg, via: r.via, skipped: r.skipped, rtt: typeof r.rttMs, state: c.state,
                        lastSkipVia: c.timings.lastSkip.via, stats: { ...c.stats },
                        pending: c._pending.size };
        c.stop();

        // 2. The socket closes before the skip's reply: not sent again, outcome unknown,
        //    the state is read from GET status.
        fetched.length = 0;
        sockets.length = 0;
        ({ c, ws } = make());
        p = c.skip();
        ws.readyState = 3;
        ws.onclose({ code: 1006, reason: '' });
        let s = await settle(p);
        await s.reconciled;
        await sleep(100); // a reconnect or a poll that might (wrongly) resend it
        out.closed = { err: s.err, skipsSent: sentOf('skip').length, skipPosts: posted('skip'),
                       statusAsked: fetched.some(([m, r]) => m === 'GET' && r === 'status'),
                       state: c.state, lastSkip: { ...c.timings.lastSkip },
                       lost: c.stats.repliesLost, pending: c._pending.size };
        c.stop();

        // 3. No reply in time (socket still open): the same; a late reply changes nothing.
        fetched.length = 0;
        sockets.length = 0;
        ({ c, ws, deliver } = make({ actionTimeoutMs: 150 }));
        p = c.skip();
        s = await settle(p);
        await s.reconciled;
        const late = ws.sent[0];
        deliver({ type: 'reply', id: late.id, status: 200,
                  body: { ...answers.skip, status: 'matched', match: { ...m1, roomName: 'r9' } } });
        out.timedOut = { err: s.err, skipsSent: sentOf('skip').length, skipPosts: posted('skip'),
                         state: c.state, lost: c.stats.repliesLost, socketKept: c._ws === ws };
        c.stop();

        // 4. An enqueue (idempotent) whose reply is lost is sent again, over HTTP.
        fetched.length = 0;
        sockets.length = 0;
        ({ c, ws } = make());
        p = c.enqueue();
        ws.readyState = 3;
        ws.onclose({ code: 1006, reason: '' });
        r = await p;
        out.enqueueLost = { via: r.via, status: r.status, socketSends: sentOf('enqueue').length,
                            posts: posted('enqueue'), stats: { ...c.stats } };
        c.stop();

        // 5. 429 then 200 over the socket: retried on the socket with a new id.
        fetched.length = 0;
        sockets.length = 0;
        ({ c, ws, deliver } = make());
        p = c.leave();
        deliver({ type: 'reply', id: ws.sent[0].id, status: 429,
                  body: { success: false, error: 'Too many requests; slow down' } });
        while (ws.sent.length < 2) await sleep(10);
        deliver({ type: 'reply', id: ws.sent[1].id, status: 200,
                  body: { success: true, left: true, roomName: 'r1' } });
        r = await p;
        out.retried = { via: r.via, ids: ws.sent.map((m) => m.id), posts: posted('leave'),
                        state: c.state };
        c.stop();

        // 6. A 400 reply rejects at once, like an HTTP 400.
        sockets.length = 0;
        ({ c, ws, deliver } = make());
        p = c.skip();
        deliver({ type: 'reply', id: ws.sent[0].id, status: 400,
                  body: { success: false, error: 'requeue must be a boolean' } });
        s = await settle(p);
        out.bad = { err: s.err, sends: ws.sent.length };
        c.stop();

        // 7. actionsOverSocket: false: HTTP even with the socket open.
        fetched.length = 0;
        sockets.length = 0;
        ({ c, ws } = make({ actionsOverSocket: false }));
        r = await c.skip();
        out.forced = { via: r.via, socketSends: ws.sent.length, posts: posted('skip'),
                       stats: { ...c.stats } };
        c.stop();
    } finally {
        clients.forEach((c) => c.stop());
        window.WebSocket = RealWebSocket;
    }
    return out;
}"""


async def test_client_socket_actions_unit(browser: Browser, base: str) -> None:
    """pushskip.js alone, over fake sockets: a reply resolves its action; a skip whose
    reply is lost (socket closed, or no reply in time) is never sent again, rejects as
    outcome unknown and is reconciled from GET status; a lost enqueue goes again over
    HTTP; 429 replies are retried on the socket; actionsOverSocket false forces HTTP."""
    async with demo_page(browser, base + "/?panes=1") as page:
        out = await page.evaluate(SOCKET_ACTIONS_JS)

    replied = out["replied"]
    assert replied["msg"]["type"] == "skip" and replied["msg"]["requeue"] is True
    assert 0 < len(replied["msg"]["id"]) <= 64
    assert (replied["via"], replied["skipped"], replied["rtt"]) == ("socket", True, "number")
    assert replied["state"] == "waiting" and replied["lastSkipVia"] == "socket"
    assert replied["stats"]["actionsViaSocket"] == 1 and replied["stats"]["actionsViaHttp"] == 0
    assert replied["pending"] == 0

    for case in ("closed", "timedOut"):
        got = out[case]
        err = got["err"]
        assert err["status"] == 0 and err["via"] == "socket" and err["unknown"] is True, got
        assert "outcome unknown" in err["message"], got
        assert got["skipsSent"] == 1 and got["skipPosts"] == 0, got  # never sent again
        assert got["state"] == "waiting" and got["lost"] == 1, got  # from GET status
    assert out["closed"]["statusAsked"] and out["closed"]["pending"] == 0
    assert out["closed"]["lastSkip"]["outcomeUnknown"] is True
    assert "socket closed" in out["closed"]["err"]["message"]
    assert "no reply in 150 ms" in out["timedOut"]["err"]["message"]
    assert out["timedOut"]["socketKept"] is True

    lost = out["enqueueLost"]
    assert (lost["via"], lost["status"], lost["socketSends"], lost["posts"]) == (
        "http", "waiting", 1, 1,
    ), lost
    assert lost["stats"]["repliesLost"] == 1 and lost["stats"]["actionsViaHttp"] == 1

    retried = out["retried"]
    assert retried["via"] == "socket" and retried["posts"] == 0 and retried["state"] == "idle"
    assert len(retried["ids"]) == 2 and len(set(retried["ids"])) == 2, retried

    assert out["bad"]["err"]["status"] == 400 and out["bad"]["sends"] == 1, out["bad"]
    assert out["bad"]["err"]["via"] == "socket" and not out["bad"]["err"]["unknown"]

    forced = out["forced"]
    assert (forced["via"], forced["socketSends"], forced["posts"]) == ("http", 0, 1), forced
    assert forced["stats"]["actionsViaHttp"] == 1 and forced["stats"]["actionsViaSocket"] == 0


# --- your app's own users: getToken, 401 / 4401 renewal, bans ------------------------------

APP_USERS_API_KEY = "browser-test-api-key"


@pytest.fixture(scope="module")
def app_users_server(redis_server: EmbeddedRedis, chromium_executable: str) -> Iterator[str]:
    """A `pushskip serve` that takes the app's HS256 JWTs and has the server API on."""
    env = {"PUSHSKIP_JWT_SECRET": APP_JWT_SECRET, "PUSHSKIP_API_KEY": APP_USERS_API_KEY}
    with app_process(redis_server.url, **env) as (url, _proc):
        yield url


APP_TOKENS_JS = """
async ([tokens, wsPlan]) => {
  const { PushskipClient } = await import('/pushskip.js');
  const handed = { alice: [], bob: [] };
  const queues = { alice: [...tokens.alice], bob: [...tokens.bob] };
  const getToken = (who) => async () => {
    const next = queues[who].length > 1 ? queues[who].shift() : queues[who][0];
    handed[who].push(next);
    return next;
  };
  const seen = { alice: [], bob: [] };
  const make = (who) => {
    const c = new PushskipClient({ getToken: getToken(who), autoRequeue: false });
    c.on('event', (e, meta) => seen[who].push([e.type, meta.via]));
    return c;
  };
  const alice = make('alice');
  const bob = make('bob');
  const bobDone = { banned: null, failed: [] };
  bob.on('banned', (info) => { bobDone.banned = info.reason; });
  bob.on('auth-failed', (f) => bobDone.failed.push(f.status));
  window.__appClients = { alice, bob, bobDone };
  await alice.start();
  await bob.start();
  const until = async (check, ms = 8000) => {
    const end = Date.now() + ms;
    while (!check()) {
      if (Date.now() > end) throw new Error('timed out');
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await until(() => alice.transport === 'websocket' && bob.transport === 'websocket');
  await alice.enqueue();
  const matched = await bob.enqueue();
  await until(() => alice.state === 'matched');
  const skipped = await alice.skip({ requeue: false });
  await until(() => seen.bob.some(([t]) => t === 'partner-skipped'));
  return {
    handed, seen,
    users: [alice.userId, bob.userId],
    matchedWith: matched.match && matched.match.partnerId,
    skipVia: skipped.via,
    states: [alice.state, bob.state],
    sessions: [alice.stats.sessions, bob.stats.sessions],
  };
}
"""


async def test_app_users_log_in_with_get_token_and_renew_on_401_and_4401(
    browser: Browser, app_users_server: str, redis: Redis
) -> None:
    """Two app users get in with getToken() (no POST /api/session): alice's first token is
    expired (401: getToken is asked again), bob's first socket is closed 4401 (a new token,
    and a reconnect); then they match and alice's skip reaches bob over his socket."""
    sockets: list[str] = []
    now = int(time.time())
    tokens = {
        "alice": [hs256_token("app-alice", exp=now - 3600), hs256_token("app-alice")],
        "bob": [hs256_token("app-bob", iat=now - 1), hs256_token("app-bob")],
    }

    async def plan(route: WebSocketRoute) -> None:
        sockets.append(route.url)
        if tokens["bob"][0] in route.url:  # bob's first socket: as if his token had expired
            await route.close(code=4401, reason="Token expired")
        else:
            route.connect_to_server()

    sessions: list[str] = []

    async def setup(page: Page) -> None:
        await page.route_web_socket("**/ws?*", plan)
        page.on("request", lambda r: sessions.append(r.url) if "/api/session" in r.url else None)

    async with demo_page(
        browser, app_users_server + "/?panes=1", setup=setup, http_errors_expected=True
    ) as page:
        out = await page.evaluate(APP_TOKENS_JS, [tokens, None])
    assert out["users"] == ["app-alice", "app-bob"]
    assert out["handed"]["alice"] == tokens["alice"]  # asked again after the 401
    assert out["handed"]["bob"] == tokens["bob"]  # asked again after the 4401
    assert out["matchedWith"] == "app-alice"
    assert out["skipVia"] == "socket"
    assert ["partner-skipped", "websocket"] in out["seen"]["bob"]
    assert out["states"] == ["idle", "idle"]
    bobs = [url for url in sockets if tokens["bob"][0] in url]
    assert len(bobs) == 1, sockets
    assert any(tokens["bob"][1] in url for url in sockets)
    # The demo's own pane may make a session; the app clients never do.
    assert not any("app-" in url for url in sessions)


async def test_a_ban_stops_the_client_and_says_so(
    browser: Browser, app_users_server: str, redis: Redis
) -> None:
    """The app's backend bans a user: their socket closes 4403 'banned', the client stops
    and emits 'banned'; the partner's client learns partner-left with reason removed."""
    tokens = {"alice": [hs256_token("ban-alice")], "bob": [hs256_token("ban-bob")]}
    async with demo_page(browser, app_users_server + "/?panes=1") as page:
        await page.evaluate(
            """async ([tokens]) => {
              const { PushskipClient } = await import('/pushskip.js');
              const out = { banned: null, left: null };
              const alice = new PushskipClient({ getToken: async () => tokens.alice[0] });
              const bob = new PushskipClient({ getToken: async () => tokens.bob[0],
                                               autoRequeue: false });
              alice.on('banned', (i) => { out.banned = i.reason; });
              bob.on('partner-left', (e) => { out.left = e.reason; });
              window.__ban = { alice, bob, out };
              await alice.start(); await bob.start();
              await alice.enqueue(); await bob.enqueue();
            }""",
            [tokens],
        )
        await page.wait_for_function("window.__ban.alice.state === 'matched'")
        async with httpx.AsyncClient(base_url=app_users_server) as http:
            response = await http.post(
                "/api/server/ban",
                json={"userId": "ban-alice", "seconds": 60},
                headers={"Authorization": f"apikey {APP_USERS_API_KEY}"},
            )
            assert response.status_code == 200, response.text
        await page.wait_for_function("window.__ban.out.banned !== null && window.__ban.out.left")
        out = await page.evaluate(
            "({out: window.__ban.out, started: window.__ban.alice.started,"
            " transport: window.__ban.alice.transport})"
        )
    assert out["out"] == {"banned": "banned", "left": "removed"}
    assert out["started"] is False and out["transport"] == "offline"


# --- media rooms: the demo shows each user's media token ------------------------------------


@pytest.fixture(scope="module")
def media_server(redis_server: EmbeddedRedis, chromium_executable: str) -> Iterator[str]:
    """A `pushskip serve` with LiveKit configured (tokens need no LiveKit server; the room
    deletions, with nothing at the URL, are retried in the background)."""
    env = {
        "LIVEKIT_URL": f"http://127.0.0.1:{free_port()}",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "a-livekit-secret-of-some-length-000",
    }
    with app_process(redis_server.url, **env) as (url, _proc):
        yield url


async def test_demo_shows_each_users_media_token_for_the_room(
    browser: Browser, media_server: str, redis: Redis
) -> None:
    """With LiveKit configured each matched pane shows that its user holds a LiveKit token
    for the room, as itself, and until when; after a skip, the skipped pane shows none."""
    async with demo_page(browser, media_server + "/") as page:
        id_a, id_b, room = await start_and_match(page)
        for name, user in (("A", id_a), ("B", id_b)):
            line = pane(page, name).get_by_test_id("media")
            await pw_expect(line).to_be_visible()
            await pw_expect(line).to_have_attribute("data-provider", "livekit")
            await pw_expect(line).to_have_attribute("data-room", room)
            await pw_expect(line).to_have_attribute("data-identity", user)
            await pw_expect(line).to_contain_text("livekit token for room")
            exp = int(await line.get_attribute("data-exp") or "0")
            assert time.time() + 500 < exp <= time.time() + 610
        await pane(page, "A").locator("[data-action=skip]").click()
        await pw_expect(pane(page, "B").get_by_test_id("media")).to_be_hidden()
