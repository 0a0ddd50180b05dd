// The demo page: N independent users side by side (?panes=1..4, default 2),
// each a PushskipClient with its own session in sessionStorage.
//
// One user per tab (?panes=1) keeps no session: the tab is the user, so
// closing it (or reloading it) leaves at once by beacon and the partner's tab
// shows "partner left (left)". ?panes=1&resume=1 keeps the session in
// sessionStorage instead: a reload resumes it and the match goes on, and a
// closed tab is noticed by the server's presence after its grace
// ("partner left (disconnected)"). See "Leaving when the page closes" in pushskip.js.
//
// Start, Skip and Leave go over the pane's socket while it is open, over HTTP
// while it is dropped; each pane's log says which (?actions=http: always HTTP).
import { PushskipClient, clock } from './pushskip.js';

const NAMES = ['A', 'B', 'C', 'D'];
const LOG_KEEP = 80;
const SKIPS_KEEP = 8;
const TAB_ID = Math.random().toString(36).slice(2);

const params = new URLSearchParams(location.search);
const paneCount = Math.min(NAMES.length, Math.max(1, parseInt(params.get('panes') ?? '2', 10) || 2));
// Sessions survive a reload: always with several panes, on request with one.
const resumable = paneCount > 1 || params.get('resume') === '1';
document.body.dataset.panes = String(paneCount);
for (const link of document.querySelectorAll('.modes a')) {
  link.classList.toggle('current', link.dataset.mode === String(paneCount));
}
if (paneCount === 1) {
  document.getElementById('lede').innerHTML =
    'This tab is one user with its own session. Open this page in a second tab, press ' +
    '<b>Start</b> in both and they match each other. Press <b>Skip</b> in one and watch how fast ' +
    'the other one learns it: pushed over a WebSocket, or by polling while its socket is down. ' +
    (resumable
      ? 'This tab keeps its session across a reload; close it and the other tab learns after the ' +
        "server's presence grace that its partner disconnected."
      : 'Close this tab and the other one learns at once that its partner left (a reload here ' +
        'is a new user; <a href="./?panes=1&amp;resume=1">keep the session across reloads</a>).');
}

// ---- skip timings shared between panes (and tabs) ----------------------------

// roomName -> { sentAt, pane, tab }: written by the skipping pane just before
// its skip is sent, read by the skipped pane when the news arrives.
const skipsSent = new Map();
const channel = 'BroadcastChannel' in window ? new BroadcastChannel('pushskip-demo') : null;
const panes = [];

function share(message) {
  receiveShared(message);
  channel?.postMessage({ ...message, tab: TAB_ID });
}

function receiveShared(message) {
  if (message.type === 'skip-sent' && message.roomName) {
    skipsSent.set(message.roomName, message);
  } else if (message.type === 'skip-notified') {
    for (const pane of panes) pane.onPartnerNotified(message);
  }
}

if (channel) channel.onmessage = (e) => e.data && e.data.tab !== TAB_ID && receiveShared(e.data);

// ---- small helpers ------------------------------------------------------------

const fmtMs = (ms) => (ms < 10 ? ms.toFixed(1) : String(Math.round(ms)));
const shortId = (id) => (id ? `${id.slice(0, 8)}…` : '');
const shortRoom = (room) => (room ? room.replace(/^room-/, '').slice(0, 8) : '');
const shortEpoch = (epoch) => (epoch == null ? 'none' : epoch.length > 8 ? `…${epoch.slice(-6)}` : epoch);

function timeOfDay(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A JWT's claims, unverified (for display only), or null. */
function jwtClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function partnerLabel(userId) {
  const pane = panes.find((p) => p.client.userId === userId);
  return pane ? `User ${pane.name}` : shortId(userId);
}

// ---- one pane ----------------------------------------------------------------

class Pane {
  constructor(name, root) {
    this.name = name;
    this.root = root;
    this.storeKey = `pushskip-demo:${name}:view`;
    this.client = new PushskipClient({
      storage: resumable ? sessionStorage : null, // null: leaves by beacon when the tab closes
      storageKey: `pushskip-demo:${name}`,
      actionsOverSocket: params.get('actions') !== 'http',
    });
    const view = this._loadView();
    this.log = view.log; // newest last
    this.skips = view.skips; // { roomName, ms, via, source, by }
    this.banner = view.banner; // 'partner-skipped' | 'partner-left' | null
    this.bannerReason = view.bannerReason; // partner-left: 'left' | 'disconnected' | null
    this.busy = false;
    this.error = null;

    const $ = (sel) => root.querySelector(sel);
    this.ui = {
      name: $('[data-role=name]'),
      uid: $('[data-testid=user-id]'),
      transport: $('[data-testid=transport]'),
      state: $('[data-testid=state]'),
      media: $('[data-testid=media]'),
      start: $('[data-action=start]'),
      skip: $('[data-action=skip]'),
      leave: $('[data-action=leave]'),
      drop: $('[data-action=drop-socket]'),
      skipsList: $('[data-testid=skips]'),
      skipsEmpty: $('[data-role=skips-empty]'),
      pollEstimate: $('[data-role=poll-estimate]'),
      pollBar: $('[data-role=poll-bar]'),
      pollDetail: $('[data-role=poll-detail]'),
      log: $('[data-testid=log]'),
      stats: $('[data-testid=stats]'),
    };
    root.dataset.pane = name;
    this.ui.name.textContent = name;

    this.ui.start.addEventListener('click', () => this.act('start'));
    this.ui.skip.addEventListener('click', () => this.act('skip'));
    this.ui.leave.addEventListener('click', () => this.act('leave'));
    this.ui.drop.addEventListener('change', () => {
      const dropped = this.ui.drop.checked;
      const text = dropped ? 'you dropped the socket: polling takes over' : 'socket allowed again';
      this.log.push({ t: clock(), kind: 'action', text }); // before the client's own lines
      this.client.setSocketEnabled(!dropped);
      this.save();
      this.render();
    });
    this._wire();
  }

  _wire() {
    const c = this.client;
    c.on('session', ({ userId, renewed, resumed }) => {
      if (resumed) {
        this.note(`resumed session ${shortId(userId)} after event #${c.lastSeq} (epoch ${shortEpoch(c.epoch)})`);
      }
      else if (renewed) this.note(`session no longer valid: new session ${shortId(userId)}`, 'warn');
      else this.note(`new session ${shortId(userId)}`);
      this.render();
    });
    c.on('state', ({ state }) => {
      if (state === 'matched') this.banner = null;
      this.render();
    });
    c.on('transport', ({ transport }) => {
      if (transport === 'websocket' || transport === 'polling') this.note(`transport: ${transport}`);
      this.render();
    });
    c.on('log', ({ message, level }) => {
      // The toggle, the session and the reset handlers write their own lines.
      const own = ['socket turned', 'session renewed', 'event log reset'];
      if (own.some((prefix) => message.startsWith(prefix))) return;
      this.note(message, level === 'warn' ? 'warn' : 'info');
    });
    c.on('skip-sent', ({ roomName, sentAt }) => {
      if (roomName) share({ type: 'skip-sent', roomName, sentAt, pane: this.name });
    });
    c.on('reset', (reset) => this.onReset(reset));
    c.on('event', (event, meta) => this.onEvent(event, meta));
  }

  /** The server's event log started anew (Redis lost it, or it expired): seqs count from 1 again. */
  onReset({ epoch, previous, state, match, lastSeq, via }) {
    const now = state === 'matched' ? `matched with ${partnerLabel(match?.partnerId)}` : state;
    const replay = lastSeq ? `, replaying its ${lastSeq} event${lastSeq === 1 ? '' : 's'}` : '';
    this.log.push({
      t: clock(),
      kind: 'warn',
      reset: epoch ?? '',
      text:
        `event log reset (epoch ${shortEpoch(previous)} → ${shortEpoch(epoch)}, via ${via}): ` +
        `state ${now}${replay}`,
    });
    if (state === 'matched') this.banner = null;
    this.save();
    this.render();
  }

  onEvent(event, meta) {
    let text = event.type;
    if (event.type === 'matched') {
      text = `matched with ${partnerLabel(event.match?.partnerId)} in room ${shortRoom(event.match?.roomName)}`;
    } else if (event.type === 'partner-skipped') {
      text = `partner skipped (room ${shortRoom(event.roomName)})`;
      this.banner = 'partner-skipped';
      this.measureSkip(event, meta);
    } else if (event.type === 'partner-left') {
      const why = event.reason ? ` (${event.reason})` : '';
      text = `partner left${why} (room ${shortRoom(event.roomName)})`;
      this.banner = 'partner-left';
      this.bannerReason = event.reason ?? null;
    }
    this.log.push({
      t: clock(),
      kind: 'event',
      seq: event.seq,
      epoch: event.epoch ?? null,
      type: event.type,
      text,
      via: meta.replay ? `${meta.via}, replay` : meta.via,
    });
    this.save();
    this.render();
  }

  measureSkip(event, meta) {
    const sent = skipsSent.get(event.roomName);
    let record;
    if (sent) {
      record = {
        roomName: event.roomName,
        ms: meta.receivedAt - sent.sentAt,
        via: meta.via,
        source: sent.tab && sent.tab !== TAB_ID ? 'clock shared across tabs' : 'same page clock',
        // Pane names repeat across tabs: name the skipper only when it is on this page.
        by: sent.tab && sent.tab !== TAB_ID ? null : sent.pane,
        // From the server's skip step (event.at, server clock) to here: the push leg alone.
        serverMs: meta.serverAgeMs,
      };
    } else {
      // The skip came from elsewhere (another browser, curl) or arrived on a
      // resume: all we have is the server's timestamp.
      record = {
        roomName: event.roomName,
        ms: meta.serverAgeMs ?? NaN,
        via: meta.replay ? `${meta.via}, on resume` : meta.via,
        source: 'from the server timestamp',
        by: null,
      };
    }
    this.skips.push(record);
    this.skips = this.skips.slice(-SKIPS_KEEP);
    share({ type: 'skip-notified', roomName: event.roomName, ms: record.ms, via: record.via, pane: this.name });
  }

  onPartnerNotified(message) {
    // Only the pane that skipped this room (on this page or in another tab) logs it.
    if (this.client.timings.lastSkip?.roomName !== message.roomName) return;
    this.note(`partner notified in ${fmtMs(message.ms)} ms (${message.via})`);
  }

  async act(what) {
    const c = this.client;
    this.error = null;
    this.busy = true;
    this.render();
    try {
      if (what === 'start') {
        this.banner = null;
        if (!c.started) await c.start();
        this.note('start: looking for a partner', 'action');
        await c.enqueue();
      } else if (what === 'skip') {
        const partner = partnerLabel(c.match?.partnerId);
        const result = await c.skip();
        const how = `skip sent via ${result.via}, reply in ${fmtMs(result.rttMs)} ms`;
        this.note(
          result.skipped ? `you skipped ${partner}: ${how}` : `skip: no active match (${how})`,
          'action',
          { action: 'skip', via: result.via },
        );
      } else if (what === 'leave') {
        this.banner = null;
        const result = await c.leave();
        this.note(`left (leave sent via ${result.via})`, 'action', { action: 'leave', via: result.via });
      }
    } catch (err) {
      this.error = err.message;
      const sent = err.via ? ` (sent via ${err.via})` : '';
      this.note(`${what} failed${sent}: ${err.message}`, 'warn', { action: what, via: err.via ?? '' });
    } finally {
      this.busy = false;
      this.render();
    }
  }

  async resume() {
    this.busy = true;
    this.render();
    try {
      await this.client.start();
    } catch (err) {
      this.error = err.message;
      this.note(`could not resume: ${err.message}`, 'warn');
    } finally {
      this.busy = false;
      this.render();
    }
  }

  /** A line in the pane's log; `action`: { action, via } for the line an action's answer writes. */
  note(text, kind = 'info', action = null) {
    this.log.push({ t: clock(), kind, text, ...(action ? { action: action.action, actionVia: action.via } : {}) });
    this.save();
    this.render();
  }

  // ---- persistence of the view (the client keeps its own session) -----------

  _loadView() {
    if (!resumable) return { log: [], skips: [], banner: null, bannerReason: null }; // a new user
    try {
      const saved = JSON.parse(sessionStorage.getItem(this.storeKey) || 'null');
      if (saved && Array.isArray(saved.log)) {
        return {
          log: saved.log,
          skips: saved.skips || [],
          banner: saved.banner || null,
          bannerReason: saved.bannerReason || null,
        };
      }
    } catch {
      /* start with an empty view */
    }
    return { log: [], skips: [], banner: null, bannerReason: null };
  }

  save() {
    this.log = this.log.slice(-LOG_KEEP);
    if (!resumable) return;
    try {
      sessionStorage.setItem(
        this.storeKey,
        JSON.stringify({
          log: this.log,
          skips: this.skips,
          banner: this.banner,
          bannerReason: this.bannerReason,
        }),
      );
    } catch {
      /* storage full: the view just will not survive a reload */
    }
  }

  // ---- drawing --------------------------------------------------------------

  stateText() {
    const c = this.client;
    if (this.error && !c.started) return ['error', `Could not reach the server: ${this.error}`];
    if (!c.started) return ['none', c.token ? 'Reconnecting…' : 'Press Start to look for a partner.'];
    if (c.state === 'matched') {
      return ['matched', `Matched with ${partnerLabel(c.match.partnerId)} in room ${shortRoom(c.match.roomName)}`];
    }
    if (this.banner && c.wantMatch) {
      const why = this.bannerReason ? ` (${this.bannerReason})` : '';
      const who = this.banner === 'partner-left' ? `Partner left${why}` : 'Partner skipped';
      return ['skipped', `${who}: finding a new match…`];
    }
    if (c.state === 'waiting' || (c.wantMatch && c.state === 'idle')) return ['waiting', 'Searching for a partner…'];
    return ['idle', 'Idle. Press Start to look for a partner.'];
  }

  render() {
    const c = this.client;
    const ui = this.ui;
    this.root.dataset.userId = c.userId ?? '';
    this.root.dataset.room = c.match?.roomName ?? '';
    ui.uid.textContent = c.userId ?? 'no session yet';
    ui.uid.title = c.userId ?? '';

    ui.transport.dataset.transport = c.transport;
    ui.transport.querySelector('span').textContent = c.transport;

    const [kind, text] = this.stateText();
    ui.state.dataset.state = kind;
    ui.state.textContent = text;
    this.renderMedia();

    ui.start.disabled = this.busy || (c.started && c.wantMatch);
    ui.skip.disabled = this.busy || c.state !== 'matched';
    ui.leave.disabled = this.busy || !c.started || (!c.wantMatch && c.state === 'idle');
    ui.drop.checked = !c.socketEnabled;

    this.renderSkips();
    this.renderEstimate();
    this.renderLog();
    ui.stats.textContent =
      `seq ${c.lastSeq} · epoch ${shortEpoch(c.epoch)} · ${c.stats.polls} polls · ` +
      `${c.stats.duplicates} dupes dropped${c.stats.resets ? ` · log reset ×${c.stats.resets}` : ''} · ` +
      `actions: ${c.stats.actionsViaSocket} via socket, ${c.stats.actionsViaHttp} via http`;
  }

  /** When the server has a media provider: the token this user holds for the room, for
   *  whom, and until when (minted anew each time the server sends the match). */
  renderMedia() {
    const media = this.client.state === 'matched' ? this.client.match?.media : null;
    const line = this.ui.media;
    const claims = media ? jwtClaims(media.token) : null;
    line.hidden = !claims;
    if (!claims) {
      delete line.dataset.room;
      return;
    }
    const room = claims.video?.room ?? '?';
    const left = Math.max(0, Math.round((claims.exp * 1000 - Date.now()) / 60_000));
    line.dataset.provider = media.provider;
    line.dataset.room = room;
    line.dataset.identity = claims.sub ?? '';
    line.dataset.exp = String(claims.exp);
    line.textContent =
      `${media.provider} token for room ${shortRoom(room)} as ${shortId(claims.sub)}, ` +
      `valid until ${timeOfDay(claims.exp * 1000)} (${left} min)`;
    line.title = `${media.url} · token for ${room}, identity ${claims.sub}`;
  }

  scaleMs() {
    return pollEstimate(this.client).worst;
  }

  renderSkips() {
    const list = this.ui.skipsList;
    const scale = this.scaleMs();
    list.replaceChildren(
      ...this.skips
        .slice()
        .reverse()
        .map((s, i) => {
          const ok = Number.isFinite(s.ms);
          const width = ok ? Math.max(1.5, Math.min(100, (s.ms / scale) * 100)) : 0;
          const by = s.by ? `User ${s.by} skipped` : 'Partner skipped';
          return el(
            'li',
            {
              class: `skip-row${i === 0 ? ' latest' : ''}`,
              dataset: { ms: ok ? s.ms.toFixed(2) : '', via: s.via },
            },
            el(
              'div',
              { class: 'row' },
              el('span', { class: 'label' }, `${by} · via ${s.via}`),
              el('span', { class: 'value' }, ok ? `${fmtMs(s.ms)} ms` : 'n/a'),
            ),
            el('div', { class: `bar ${s.via.startsWith('polling') ? 'poll' : 'push'}` }, barFill(width)),
            el('p', { class: 'fine' }, detailOf(s)),
          );
        }),
    );
    this.ui.skipsEmpty.hidden = this.skips.length > 0;
  }

  renderEstimate() {
    const est = pollEstimate(this.client);
    this.ui.pollEstimate.textContent = `≈ ${Math.round(est.average)} ms`;
    this.ui.pollBar.style.width = `${(est.average / est.worst) * 100}%`;
    this.ui.pollDetail.textContent =
      `average: ${Math.round(est.interval / 2)} ms wait for the next poll + ${fmtMs(est.rtt)} ms request` +
      `${est.measured ? '' : ' (not yet measured)'}; worst case ≈ ${Math.round(est.worst)} ms. An estimate, not a measurement.`;
  }

  renderLog() {
    const items = this.log
      .slice()
      .reverse()
      .map((entry) => {
        const li = el(
          'li',
          { class: `entry ${entry.kind}` },
          el('time', {}, timeOfDay(entry.t)),
          entry.seq != null ? el('span', { class: 'seq' }, `#${entry.seq}`) : null,
          el('span', { class: 'text' }, entry.text),
          entry.via ? el('span', { class: `via ${entry.via.split(',')[0]}` }, entry.via) : null,
        );
        if (entry.seq != null) {
          li.dataset.seq = String(entry.seq);
          li.dataset.type = entry.type;
          if (entry.epoch != null) li.dataset.epoch = entry.epoch;
        }
        if (entry.reset != null) li.dataset.reset = entry.reset;
        if (entry.action != null) {
          li.dataset.action = entry.action;
          li.dataset.via = entry.actionVia ?? '';
        }
        return li;
      });
    this.ui.log.replaceChildren(...items);
  }
}

function detailOf(skip) {
  if (skip.serverMs == null || !Number.isFinite(skip.serverMs)) return skip.source;
  const leg = Math.max(0, Math.round(skip.serverMs));
  return `${skip.source} · from the server's skip step to here: ~${leg} ms`;
}

function barFill(widthPct) {
  const span = el('span');
  span.style.width = `${widthPct}%`;
  return span;
}

/** What 500 ms polling would have given: half an interval on average, plus a request. */
function pollEstimate(client) {
  const interval = client.pollIntervalMs;
  const measured = client.timings.httpRttMs != null;
  const rtt = measured ? client.timings.httpRttMs : 0;
  return { interval, rtt, measured, average: interval / 2 + rtt, worst: interval + rtt };
}

// ---- boot ----------------------------------------------------------------------

const main = document.getElementById('panes');
const template = document.getElementById('pane-template');
for (const name of NAMES.slice(0, paneCount)) {
  const root = template.content.firstElementChild.cloneNode(true);
  main.append(root);
  panes.push(new Pane(name, root));
}
panes.forEach((p) => p.render());

// A pane with a stored session picks up where it was (events after its lastSeq).
const ready = Promise.all(panes.map((p) => (p.client.token ? p.resume() : null)));
// Timers and estimates move without events: redraw now and then.
setInterval(() => panes.forEach((p) => p.renderEstimate()), 1000);

// For tests and the curious: window.pushskipDemo.panes[0].client
window.pushskipDemo = { panes, ready, skipsSent };
