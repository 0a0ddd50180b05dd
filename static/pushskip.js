// pushskip.js: the browser client for a pushskip server. A dependency-free ES
// module, no build step:
//
//   import { PushskipClient } from '/pushskip.js';
//   const c = new PushskipClient({ baseUrl: location.origin, storage: sessionStorage });
//   c.on('partner-skipped', (event, meta) => ...);
//   await c.start();      // session (POST /api/session, or the stored one), then /ws
//   await c.enqueue();
//
// Transport: a WebSocket first (/ws?token=...&after=<lastSeq>&epoch=<epoch>).
// While it is down the client polls
// GET /api/simple-matching/events?after=<lastSeq>&epoch=<epoch> every
// pollIntervalMs (from the server's hello, 500 ms by default) and reconnects
// with exponential backoff and full jitter; once a new socket says hello,
// polling stops. Events from either path go through one gate: de-duplicated
// by seq and handed to handlers in seq order, each exactly once.
//
// Epochs: a user's event log has an epoch, a string that changes whenever the
// log starts anew (it expired, or Redis lost its data). Seqs count within one
// epoch and are compared only within it. The client keeps the epoch of its
// lastSeq (null: it has seen no log yet) and sends both when it resumes. A
// server whose log is another epoch answers with a reset (a hello, or an
// events answer, with "reset": true): the client forgets its seqs, takes the
// state it is given, emits 'reset', and then takes that log's events from
// seq 1. A client with no epoch adopts the one its first events carry. An
// event of another epoch that comes without a reset is never delivered: the
// reset comes first (the socket) or on the next poll.
//
// Actions (option actionsOverSocket, default true): enqueue(), skip() and
// leave() go over the socket while it is open and has said hello, as
// {"type": <action>, "id": <unique>, ...body}, and over HTTP otherwise. The
// server answers {"type": "reply", "id", "status", "body"} with the status and
// body the HTTP route would give, so both look the same to callers: the same
// body (plus `via`: 'socket' | 'http', `sentAt`, `rttMs`), the same 429/503
// retries with backoff. A reply is due within actionTimeoutMs (10 s); one that
// does not come (the socket closed, or the time ran out) is lost. A lost
// enqueue or leave (idempotent) is sent again over HTTP. A lost skip is never
// sent again, as over HTTP after a network error (it may have landed and paired
// us again at once: a second skip would end that match): it rejects with
// status 0 and `outcomeUnknown: true`, and the client reads GET status to learn
// where it stands (`err.reconciled` resolves once it has). A reply that comes
// after its action was given up is ignored.
//
// Your app's own users (option getToken): an async function that returns a
// token your backend signed for its user (a JWT whose `sub` is the user id;
// see the README, "Use it from your app"). The client then never calls
// POST /api/session: it calls getToken() at start(), and again whenever the
// server says the token is no longer good (an HTTP 401 or a socket closed
// 4401, e.g. it expired), retrying once with the new token before it gives
// up (a PushskipError with status 401, and an 'auth-failed' event). The user
// id is the token's `sub`, and hello's userId. A token of another user than
// before starts the event bookkeeping afresh, as a new session does.
//
// Bans: a socket closed 4403 with reason 'banned' (the app's backend banned
// the user) stops the client and emits 'banned'; enqueue() answers 403 while
// the ban lasts.
//
// State: 'idle' | 'waiting' | 'matched'. A snapshot (status call or hello)
// describes the state after every event up to its lastSeq; events above it
// change the state, events at or below it are only delivered. An action's
// answer (HTTP or socket reply) is applied only when nothing else changed the
// state while it was in flight; otherwise the client asks GET status. An
// action's own events may come before its reply or after it.
//
// Why a match ended: a 'partner-left' event carries the server's reason,
// 'left' (the partner left: the Leave button, or their page closed and sent
// the leave below) or 'disconnected' (the partner vanished: no socket and no
// request for the server's presence grace, 5 s by default). The 'state'
// event that ends the match passes the event as `event`, so
// on('state', ({ state, reason, event }) => ...) sees event.reason too.
//
// Leaving when the page closes (option leaveOnPageHide, default 'auto'): on a
// pagehide that ends the page (event.persisted === false; a page going into
// the back/forward cache may come back as it is, and is left alone), a client
// that is waiting or matched sends POST /api/simple-matching/leave with
// navigator.sendBeacon (else fetch with keepalive), the token in its
// text/plain JSON body, once. The partner then learns 'left' at once instead
// of 'disconnected' after the grace. A socket that merely drops sends nothing.
//
// A reload fires the same pagehide as a close, and a page cannot tell them
// apart: the reload button, F5 and pull-to-refresh give the page no sign.
// So 'auto' beacons only when the session dies with the page anyway, that
// is when the client keeps it in no `storage`: a reload is then a new user,
// and leaving at once is right for a close and a reload alike. A client with
// a `storage` sends nothing: its reload resumes the session inside the grace
// and the match goes on, while a close is caught by the server's presence
// after the grace, with reason 'disconnected'. true: beacon with a storage
// as well (a close is told at once, but a reload then ends the match and the
// reloaded page looks again if it wanted a match). false: never.

/** Milliseconds on a clock shared by every tab of this machine (high resolution). */
export const clock = () => performance.timeOrigin + performance.now();

const STATUS = '/api/simple-matching/status';

const DEFAULTS = {
  baseUrl: undefined, // default: the page's origin
  pollIntervalMs: 500, // until the server's hello says otherwise
  keepAliveMs: 10_000, // re-enqueue while waiting (the server drops entries unseen for 30 s)
  requeue: true, // skip() puts me back in the queue
  autoRequeue: true, // partner skipped or left, and I still want a match: enqueue again
  storage: null, // e.g. sessionStorage: keeps token, lastSeq, epoch and intent across reloads
  storageKey: 'pushskip',
  socket: true, // false: start with the socket off (polling only)
  reconnectBaseMs: 500,
  reconnectMaxMs: 15_000,
  pollBackoffMaxMs: 5_000,
  heartbeatMs: 15_000, // send {"type":"ping"} this often
  heartbeatTimeoutMs: 10_000, // ...and drop a socket silent for heartbeatMs + this
  requestTimeoutMs: 10_000,
  startTimeoutMs: 3_000, // start() waits at most this long for the socket's hello
  maxRetries: 4, // for 429 / 503 / network errors on idempotent calls
  actionsOverSocket: true, // enqueue/skip/leave over the open socket; false: always HTTP
  actionTimeoutMs: 10_000, // a socket action's reply not in by then is lost
  // Leave by beacon when the page goes away: 'auto' (only without a storage:
  // a reload can resume a stored session), true (even with one), false (never).
  leaveOnPageHide: 'auto',
  // async () => token: your backend's token for your user, instead of POST /api/session.
  getToken: null,
};

const EVENT_TYPES = ['matched', 'partner-skipped', 'partner-left'];

export class PushskipError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = 'PushskipError';
    this.status = status; // HTTP status, 0 for a network failure or timeout
    this.body = body;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The `sub` of a JWT (not verified: the server does that), or null for any other token. */
export function tokenSubject(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3 || !parts[0].startsWith('eyJ')) return null;
  try {
    const json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'));
    const claims = JSON.parse(json);
    return typeof claims.sub === 'string' ? claims.sub : null;
  } catch {
    return null;
  }
}
const roomOf = (match) => (match ? match.roomName : null);

export class PushskipClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const base = this.options.baseUrl ?? globalThis.location?.origin;
    if (!base) throw new TypeError('PushskipClient: baseUrl is required outside a page');
    this.baseUrl = String(base).replace(/\/+$/, '');

    this.userId = null;
    this.token = null;
    this.lastSeq = 0; // highest seq delivered to handlers, in `epoch`
    this.epoch = null; // the event log's epoch that lastSeq counts in; null: none seen yet
    this.state = 'idle';
    this.match = null;
    this.transport = 'offline'; // offline | connecting | websocket | polling
    this.pollIntervalMs = this.options.pollIntervalMs;
    this.socketEnabled = this.options.socket;
    this.wantMatch = false; // the user pressed start/enqueue and has not left
    this.started = false;

    // Measurements, all on `clock()` (ms): for demos, tests and dashboards.
    this.timings = {
      lastSkip: null, // { roomName, sentAt, rttMs, via: 'socket' | 'http', outcomeUnknown? }
      lastAction: null, // { name, via, sentAt, rttMs }: the last action that got an answer
      lastNotified: null, // { type, roomName, reason, receivedAt, via, at }
      httpRttMs: null, // smoothed HTTP round trip
      socketRttMs: null, // smoothed round trip of an action over the socket
      lastPollAt: null,
      pageHideLeave: null, // { at, via: 'beacon' | 'fetch', state }: the leave sent on pagehide
    };
    this.stats = {
      delivered: 0,
      duplicates: 0,
      otherEpoch: 0, // events of another log than ours, dropped (a reset comes instead)
      resets: 0,
      polls: 0,
      reconnects: 0,
      sessions: 0,
      actionsViaSocket: 0, // actions answered by a socket reply
      actionsViaHttp: 0, // actions answered over HTTP
      repliesLost: 0, // socket actions whose reply never came (socket closed, timeout)
    };

    this._handlers = new Map();
    this._ws = null;
    this._wsReady = false; // hello received on this._ws
    this._wsAttempt = 0;
    this._lastMessageAt = 0;
    this._timers = {};
    this._polling = false;
    this._pollFailures = 0;
    this._stateVersion = 0; // bumps whenever the state's source of truth moves
    this._snapshotSeq = 0;
    this._snapshotEpoch = null; // the epoch _snapshotSeq counts in; null: unknown or no log
    this._logVersion = 0; // bumps whenever `epoch` changes: a poll asked before is stale
    this._renewing = null;
    this._enqueuing = null;
    this._startPromise = null;
    this._stopped = false;
    this._pageLeaveSent = false; // the pagehide leave goes once per page
    this._socketAuthFailures = 0; // sockets closed 4401 since the last hello
    this._pending = new Map(); // socket action id -> { resolve, reject, sentAt, name, timer }
    this._actionCount = 0;
    this._load();
  }

  // ---- events -------------------------------------------------------------

  /** on('matched' | 'partner-skipped' | 'partner-left' | 'event' | 'state' |
   *  'transport' | 'session' | 'skip-sent' | 'reset' | 'log', fn). Returns an unsubscribe.
   *
   *  'state' gets { state, match, previous, reason, event }: reason is what moved
   *  it ('matched', 'partner-skipped', 'partner-left', 'enqueue', 'hello', ...),
   *  event the server event that did, if one did (for 'partner-left',
   *  event.reason is 'left' or 'disconnected').
   *
   *  'reset' gets { epoch, previous, state, match, lastSeq, via }: the server's log
   *  started anew (epoch: the new one, null when there is no log; previous: ours),
   *  the state is now the one it gave, and that log's events follow from seq 1
   *  (those up to lastSeq as replays). */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._handlers.get(type)?.delete(fn);
  }

  _emit(type, ...args) {
    for (const fn of [...(this._handlers.get(type) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`pushskip: a '${type}' handler threw`, err);
      }
    }
  }

  _log(message, level = 'info') {
    this._emit('log', { message, level, at: clock() });
  }

  // ---- lifecycle ----------------------------------------------------------

  /** Gets a session (the stored one if still valid), reads the state, opens the socket. */
  start() {
    if (this._startPromise) return this._startPromise;
    this._stopped = false;
    this._watchPageHide(true);
    this._startPromise = (async () => {
      if (this.options.getToken) await this._takeAppToken(false);
      else if (!this.token) await this._newSession(false);
      else this._emit('session', { userId: this.userId, renewed: false, resumed: true });
      await this.refresh(); // a 401 here (expired token) makes a new session
      this.started = true;
      this._startPolling(false); // first poll after one interval, unless the socket is up by then
      this._connect();
      await this._untilLive(this.options.startTimeoutMs);
      this._timers.keepAlive = setInterval(() => this._keepAlive(), this.options.keepAliveMs);
      this._listenToPage(true);
      this._maybeRequeue();
    })();
    this._startPromise.catch(() => {
      this._startPromise = null;
    });
    return this._startPromise;
  }

  /** Resolves once events flow: the socket said hello, or polling took over (or timeout). */
  _untilLive(timeoutMs) {
    if (this._wsReady || !this.socketEnabled || this.transport === 'polling') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        off();
        resolve();
      };
      const off = this.on('transport', ({ transport }) => {
        if (transport === 'websocket' || transport === 'polling') done();
      });
      const timer = setTimeout(done, timeoutMs);
    });
  }

  /** Closes the socket and stops every timer; the session stays stored. */
  stop() {
    this._stopped = true;
    this.started = false;
    this._startPromise = null;
    for (const [name, id] of Object.entries(this._timers)) {
      clearTimeout(id);
      clearInterval(id);
      delete this._timers[name];
    }
    this._stopPolling();
    this._listenToPage(false);
    this._watchPageHide(false);
    this._dropSocket('client stopped');
    this._setTransport('offline');
  }

  /** Hidden tabs get their timers throttled: catch up when the tab shows or the network returns. */
  _listenToPage(on) {
    if (typeof window === 'undefined') return;
    if (!this._onPageEvent) {
      this._onPageEvent = (e) => {
        if (!this.started) return;
        if (e.type === 'online' || document.visibilityState === 'visible') {
          this._keepAlive();
          if (!this._ws && this.socketEnabled) {
            this._wsAttempt = 0;
            this._connect();
          }
        }
      };
    }
    const method = on ? 'addEventListener' : 'removeEventListener';
    window[method]('online', this._onPageEvent);
    window[method]('pageshow', this._onPageEvent); // back from the back/forward cache
    document[method]('visibilitychange', this._onPageEvent);
  }

  /** pagehide: see "Leaving when the page closes" at the top. On from start() or enqueue() to stop(). */
  _watchPageHide(on) {
    if (typeof window === 'undefined') return;
    if (!this._onPageHide) this._onPageHide = (e) => this._pageHidden(e);
    if (on) window.addEventListener('pagehide', this._onPageHide);
    else window.removeEventListener('pagehide', this._onPageHide);
  }

  _pageHidden(event) {
    if (event.persisted !== false) return; // into the back/forward cache: it may come back as it is
    const mode = this.options.leaveOnPageHide;
    if (!mode || (mode === 'auto' && this.options.storage)) return; // a reload resumes a stored session
    if (this._pageLeaveSent || !this.token) return;
    if (this.state === 'idle' && !this.wantMatch) return; // nothing to leave
    this._pageLeaveSent = true;
    const url = `${this.baseUrl}/api/simple-matching/leave`;
    const body = JSON.stringify({ token: this.token }); // a beacon cannot send Authorization
    let via = 'beacon';
    let queued = false;
    try {
      queued = typeof navigator.sendBeacon === 'function' && navigator.sendBeacon(url, body);
    } catch {
      queued = false; // refused (a bad URL): try fetch
    }
    if (!queued) {
      // No sendBeacon, or its queue is full: a keepalive fetch outlives the page too.
      via = 'fetch';
      try {
        const init = { method: 'POST', body, keepalive: true, credentials: 'omit', cache: 'no-store' };
        fetch(url, init).catch(() => {});
      } catch {
        /* nothing more can be done: the server's presence ends the match after the grace */
      }
    }
    this.timings.pageHideLeave = { at: clock(), via, state: this.state };
    this._log(`page closing: leave sent (${via})`);
  }

  /** Forgets the stored session (the next start() makes a new one). */
  forget() {
    this.stop();
    this.options.storage?.removeItem(this.options.storageKey);
    this.userId = this.token = null;
    this.lastSeq = this._snapshotSeq = 0;
    this.epoch = this._snapshotEpoch = null;
    this.wantMatch = false;
    this._setState('idle', null, 'forget');
  }

  /** Turns the WebSocket off (polling takes over at once) or back on (reconnects now). */
  setSocketEnabled(enabled) {
    enabled = Boolean(enabled);
    if (enabled === this.socketEnabled) return;
    this.socketEnabled = enabled;
    if (!enabled) {
      clearTimeout(this._timers.reconnect);
      this._dropSocket('socket turned off');
    } else {
      this._wsAttempt = 0;
      this._log('socket turned on: reconnecting');
      this._connect();
    }
  }

  // ---- actions ------------------------------------------------------------

  /** Joins the queue (idempotent). Resolves to the server's answer. */
  enqueue() {
    this.wantMatch = true;
    this._save();
    if (!this._stopped) this._watchPageHide(true);
    if (this._enqueuing) return this._enqueuing;
    this._enqueuing = this._action('enqueue', {}, true, (body) =>
      body.status === 'matched' ? ['matched', body.match] : ['waiting', null],
    ).finally(() => {
      this._enqueuing = null;
    });
    return this._enqueuing;
  }

  /** Skips the partner. Resolves to the server's answer plus { via, sentAt, rttMs }. */
  async skip({ requeue = this.options.requeue } = {}) {
    if (!requeue) {
      this.wantMatch = false;
      this._save();
    }
    const roomName = roomOf(this.match);
    const sentAt = clock();
    const via = this._actionSocket() ? 'socket' : 'http';
    const record = { roomName, sentAt, rttMs: null, via };
    this.timings.lastSkip = record;
    this._emit('skip-sent', { roomName, sentAt, via });
    // Not sent again after a network error or a lost socket reply: a skip that
    // did reach the server may have matched us again at once, and a second
    // skip would end that match.
    let body;
    try {
      body = await this._action('skip', { requeue }, false, (answer) =>
        answer.skipped ? [answer.status, answer.match] : null,
      );
    } catch (err) {
      if (err.via) record.via = err.via;
      if (err.outcomeUnknown) record.outcomeUnknown = true;
      throw err;
    }
    record.rttMs = clock() - sentAt;
    record.via = body.via;
    return { ...body, sentAt, rttMs: record.rttMs };
  }

  /** Leaves the queue or the match (the partner gets partner-left). */
  async leave() {
    this.wantMatch = false;
    this._save();
    return this._action('leave', {}, true, () => ['idle', null]);
  }

  /** Reads GET status and takes it as the current state. */
  async refresh() {
    let body;
    let epoch;
    for (let i = 0; i < 3; i++) {
      body = await this._request('GET', STATUS);
      // An answer without an epoch counts in ours.
      epoch = typeof body.epoch === 'string' || body.epoch === null ? body.epoch : this.epoch;
      // Events newer than this answer arrived meanwhile (in the same log): ask again.
      if (epoch !== this.epoch || !(body.lastSeq < this.lastSeq)) break;
    }
    this._applySnapshot(body.state, body.match, body.lastSeq, epoch, 'status');
    return body;
  }

  /** Runs an action (over the socket or HTTP), applies its answer; the body plus { via, sentAt, rttMs }. */
  async _action(name, payload, idempotent, toState) {
    const version = this._stateVersion;
    const sentAt = clock();
    let answer;
    try {
      answer = await this._perform(name, payload, idempotent);
    } catch (err) {
      if (err.outcomeUnknown) {
        // Whether it ran, nobody knows: the server's state says.
        err.reconciled = this.refresh().then(
          () => this._log(`after the ${name} of unknown outcome, status says: ${this.state}`),
          (e) => this._log(`status after ${name}: ${e.message}`, 'warn'),
        );
      }
      throw err;
    }
    const { body, via } = answer;
    const next = toState(body);
    const same = next && next[0] === this.state && roomOf(next[1]) === roomOf(this.match);
    if (next && (this._stateVersion === version || same)) {
      this._setState(next[0], next[1], name);
    } else {
      await this.refresh().catch((err) => this._log(`status after ${name}: ${err.message}`, 'warn'));
    }
    const rttMs = clock() - sentAt;
    this.timings.lastAction = { name, via, sentAt, rttMs };
    return { ...body, via, sentAt, rttMs };
  }

  /** The socket actions may use now: open, hello received, and allowed by the options. */
  _actionSocket() {
    if (!this.options.actionsOverSocket || !this._wsReady) return null;
    const ws = this._ws;
    // 1: WebSocket.OPEN (a socket that is closing would drop the message).
    if (!ws || (ws.readyState !== undefined && ws.readyState !== 1)) return null;
    return ws;
  }

  /**
   * One action, answered: { body, via }. Over the socket while it is usable,
   * else HTTP; errors, 401 renewal and 429/503 retries as `_request` has them.
   * A lost reply: see "Actions" at the top.
   */
  async _perform(name, payload, idempotent) {
    const path = `/api/simple-matching/${name}`;
    const retries = this.options.maxRetries;
    let attempt = 0;
    let renewed = false;
    let httpOnly = false; // after a lost reply, an idempotent action goes over HTTP
    for (;;) {
      if (this._renewing) await this._renewing;
      const ws = httpOnly ? null : this._actionSocket();
      if (!ws) {
        try {
          const body = await this._request('POST', path, payload, {
            idempotent,
            retries: Math.max(0, retries - attempt),
          });
          this.stats.actionsViaHttp++;
          return { body, via: 'http' };
        } catch (err) {
          err.via = 'http';
          // No answer to a skip: it may have run (never sent again, see skip()).
          if (err.status === 0 && !idempotent) err.outcomeUnknown = true;
          throw err;
        }
      }
      const token = this.token;
      let reply;
      try {
        reply = await this._sendAction(ws, name, payload);
      } catch (err) {
        if (err.notSent) {
          httpOnly = true; // never left: safe over HTTP, even a skip
          continue;
        }
        this.stats.repliesLost++;
        if (!idempotent) {
          const lost = new PushskipError(0, `${name}: ${err.message}; outcome unknown, not sent again`);
          lost.via = 'socket';
          lost.outcomeUnknown = true;
          throw lost;
        }
        this._log(`${name} sent over the socket: ${err.message}; sending it again over HTTP`, 'warn');
        httpOnly = true;
        continue;
      }
      const { status, body: data } = reply;
      if (status >= 200 && status < 300 && data && data.success !== false) {
        this.stats.actionsViaSocket++;
        return { body: data, via: 'socket' };
      }
      const message = data?.error || `${status} (socket reply)`;
      if (status === 401 && !renewed) {
        renewed = true;
        await this._renewSession(token, message);
        continue;
      }
      if (status === 401) this._emit('auth-failed', { status, message, via: 'socket' });
      const retryable = status === 429 || status === 503 || (status >= 500 && idempotent);
      if (retryable && attempt < retries) {
        const wait = this._backoff(attempt);
        attempt++;
        this._log(`${path}: ${status} over the socket, retrying in ${Math.round(wait)} ms`, 'warn');
        await sleep(wait);
        continue;
      }
      const err = new PushskipError(status, message, data ?? null);
      err.via = 'socket';
      throw err;
    }
  }

  /** Sends one action on `ws`; resolves to its reply { status, body }, rejects when it is lost. */
  _sendAction(ws, name, payload) {
    return new Promise((resolve, reject) => {
      const id = `${name}-${++this._actionCount}-${Math.random().toString(36).slice(2, 10)}`;
      const sentAt = clock();
      const timeoutMs = this.options.actionTimeoutMs;
      const timer = setTimeout(() => this._loseReply(id, `no reply in ${timeoutMs} ms`), timeoutMs);
      this._pending.set(id, { resolve, reject, sentAt, name, timer });
      try {
        ws.send(JSON.stringify({ ...payload, type: name, id }));
      } catch (err) {
        this._pending.delete(id);
        clearTimeout(timer);
        reject(Object.assign(new Error(`not sent: ${err.message}`), { notSent: true }));
      }
    });
  }

  _onReply(message, receivedAt) {
    const pending = typeof message.id === 'string' ? this._pending.get(message.id) : undefined;
    if (!pending) {
      // Given up on already (timed out), or not ours: never applied.
      this._log(`reply ${message.id} (status ${message.status}) to no pending action: ignored`, 'warn');
      return;
    }
    this._pending.delete(message.id);
    clearTimeout(pending.timer);
    const rtt = receivedAt - pending.sentAt;
    this.timings.socketRttMs = this.timings.socketRttMs == null ? rtt : this.timings.socketRttMs * 0.8 + rtt * 0.2;
    pending.resolve({ status: message.status, body: message.body });
  }

  _loseReply(id, why) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    pending.reject(new Error(why));
  }

  /** The socket is gone: no reply will come for what it carried. */
  _loseAllReplies(why) {
    for (const id of [...this._pending.keys()]) this._loseReply(id, why);
  }

  _keepAlive() {
    if (this.started && this.wantMatch && this.state === 'waiting') {
      this.enqueue().catch((err) => this._log(`keep-alive enqueue: ${err.message}`, 'warn'));
    }
  }

  _maybeRequeue() {
    if (!this.options.autoRequeue || this._timers.requeue) return;
    if (!this.started || this._stopped || !this.wantMatch || this.state !== 'idle') return;
    this._timers.requeue = setTimeout(() => {
      delete this._timers.requeue;
      if (!this.started || !this.wantMatch || this.state !== 'idle') return;
      this.enqueue().catch((err) => {
        this._log(`re-enqueue failed (${err.message}); trying again`, 'warn');
        this._timers.requeue = setTimeout(() => {
          delete this._timers.requeue;
          this._maybeRequeue();
        }, 2_000);
      });
    }, 0);
  }

  // ---- state --------------------------------------------------------------

  /** `reason`: what moved the state; `event`: the server event that did, if one did. */
  _setState(state, match, reason, event = null) {
    const previous = this.state;
    const previousRoom = roomOf(this.match);
    this.state = state;
    this.match = state === 'matched' ? match ?? null : null;
    if (previous !== state || previousRoom !== roomOf(this.match)) {
      this._emit('state', { state, match: this.match, previous, reason, event });
    }
    if (state === 'idle') this._maybeRequeue();
  }

  /** Takes `state` as the truth after every event up to `lastSeq` of the log `epoch`. */
  _applySnapshot(state, match, lastSeq, epoch, source) {
    this._snapshotSeq = Number.isInteger(lastSeq) ? lastSeq : this.lastSeq;
    this._snapshotEpoch = typeof epoch === 'string' ? epoch : null;
    this._stateVersion++;
    this._setState(state, match, source);
  }

  /**
   * The server's log is another epoch than ours (a hello or an events answer
   * with "reset": true): start over at seq 0 in its epoch, take its state.
   * `snapshot` is { epoch, state, match, lastSeq } as the server sent it.
   */
  _reset(snapshot, via) {
    const previous = this.epoch;
    const epoch = typeof snapshot.epoch === 'string' ? snapshot.epoch : null;
    this.epoch = epoch;
    this.lastSeq = 0;
    this._logVersion++;
    this.stats.resets++;
    this._save();
    this._applySnapshot(snapshot.state, snapshot.match, snapshot.lastSeq, epoch, 'reset');
    const lastSeq = this._snapshotSeq;
    this._log(
      `event log reset (epoch ${previous ?? 'none'} → ${epoch ?? 'none'}, via ${via}): ` +
        `state ${this.state}, ${lastSeq} event${lastSeq === 1 ? '' : 's'} in the new log`,
      'warn',
    );
    this._emit('reset', { epoch, previous, state: this.state, match: this.match, lastSeq, via });
  }

  /** A client with no epoch takes the first one it hears of; seqs count from 0 in it. */
  _adoptEpoch(epoch) {
    if (this.epoch !== null || typeof epoch !== 'string') return;
    this.epoch = epoch;
    this.lastSeq = 0;
    this._logVersion++;
    this._save();
  }

  _applyEvent(event) {
    if (event.type === 'matched') {
      this._setState('matched', event.match, 'matched', event);
    } else if (event.type === 'partner-skipped' || event.type === 'partner-left') {
      // Only the room we are in ends; an old room's event changes nothing.
      if (this.state === 'matched' && roomOf(this.match) === event.roomName) {
        this._setState('idle', null, event.type, event); // partner-left: event.reason says why
      }
    }
  }

  /** The one gate every event passes: same epoch, dedupe by seq, in order, exactly once. */
  _ingest(events, via, receivedAt) {
    const sorted = [...events].filter((e) => e && Number.isInteger(e.seq)).sort((a, b) => a.seq - b.seq);
    for (const event of sorted) {
      // An event without an epoch counts in ours.
      const epoch = typeof event.epoch === 'string' ? event.epoch : this.epoch;
      this._adoptEpoch(epoch); // the log began after our hello or poll: no reset needed
      if (epoch !== this.epoch) {
        // Another log than ours: its seqs mean nothing against lastSeq. The
        // reset that restarts our count comes first on a socket, or answers
        // the next poll; until then nothing of that log is delivered.
        this.stats.otherEpoch++;
        this._log(`event #${event.seq} of epoch ${epoch} ignored: ours is ${this.epoch}, a reset is due`, 'warn');
        continue;
      }
      if (event.seq <= this.lastSeq) {
        this.stats.duplicates++;
        continue;
      }
      if (event.seq > this.lastSeq + 1) {
        this._log(`events ${this.lastSeq + 1}..${event.seq - 1} are no longer in the server log`, 'warn');
      }
      this.lastSeq = event.seq;
      this._save();
      this.stats.delivered++;
      this._stateVersion++;
      const replay =
        event.seq <= this._snapshotSeq && (this._snapshotEpoch === null || this._snapshotEpoch === epoch);
      const meta = {
        via,
        receivedAt,
        replay,
        serverAgeMs: typeof event.at === 'number' ? Date.now() - event.at : null,
      };
      if (event.type === 'partner-skipped' || event.type === 'partner-left') {
        this.timings.lastNotified = {
          type: event.type,
          roomName: event.roomName,
          reason: event.reason ?? null, // partner-left: 'left' | 'disconnected'
          receivedAt,
          via,
          at: event.at,
        };
      }
      // State first, so handlers see it (c.state is 'matched' inside on('matched')).
      if (!replay) this._applyEvent(event);
      if (EVENT_TYPES.includes(event.type)) this._emit(event.type, event, meta);
      this._emit('event', event, meta);
    }
  }

  // ---- HTTP ---------------------------------------------------------------

  async _request(method, path, body, { idempotent = true, retries = this.options.maxRetries, auth = true } = {}) {
    let attempt = 0;
    let renewed = false;
    for (;;) {
      if (auth && this._renewing) await this._renewing;
      const token = this.token;
      const t0 = clock();
      let response;
      try {
        response = await this._fetch(method, path, body, auth ? token : null);
      } catch (err) {
        if (!idempotent || attempt >= retries) {
          throw new PushskipError(0, `${method} ${path}: ${err.name === 'AbortError' ? 'timed out' : err.message}`);
        }
        await sleep(this._backoff(attempt++));
        continue;
      }
      const rtt = clock() - t0;
      this.timings.httpRttMs = this.timings.httpRttMs == null ? rtt : this.timings.httpRttMs * 0.8 + rtt * 0.2;
      let data = null;
      try {
        data = await response.json();
      } catch {
        data = null;
      }
      if (response.ok && data && data.success !== false) return data;
      const message = data?.error || `${response.status} ${response.statusText}`;
      const status = response.status;
      if (status === 401 && auth && !renewed) {
        renewed = true;
        await this._renewSession(token, message);
        continue;
      }
      if (status === 401 && auth) this._emit('auth-failed', { status, message, via: 'http' });
      const retryable = status === 429 || status === 503 || (status >= 500 && idempotent);
      if (retryable && attempt < retries) {
        const wait = this._retryAfter(response) ?? this._backoff(attempt);
        attempt++;
        this._log(`${path.split('?')[0]}: ${status}, retrying in ${Math.round(wait)} ms`, 'warn');
        await sleep(wait);
        continue;
      }
      throw new PushskipError(status, message, data);
    }
  }

  async _fetch(method, path, body, token) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.requestTimeoutMs);
    try {
      return await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        signal: controller.signal,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  _backoff(attempt) {
    // Full jitter: anywhere in [0, min(cap, base * 2^attempt)).
    const cap = Math.min(this.options.reconnectMaxMs, this.options.reconnectBaseMs * 2 ** attempt);
    return Math.random() * cap;
  }

  _retryAfter(response) {
    const raw = response.headers.get('Retry-After');
    const seconds = raw == null ? NaN : Number(raw);
    return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds * 1000, 30_000) : null;
  }

  // ---- session ------------------------------------------------------------

  async _newSession(renewed, why = '') {
    const body = await this._request('POST', '/api/session', undefined, { auth: false });
    const previous = this.userId;
    this.userId = body.userId;
    this.token = body.token;
    this.lastSeq = 0; // seq counts per user: a new user starts over
    this.epoch = null;
    this._snapshotSeq = 0;
    this._snapshotEpoch = null;
    this.stats.sessions++;
    this._save();
    if (renewed) this._log(`session renewed (${why})`, 'warn');
    this._emit('session', { userId: this.userId, previous, renewed, resumed: false });
    if (renewed) {
      this._stateVersion++;
      this._setState('idle', null, 'session');
      if (this._ws) this._dropSocket('new session');
      if (this.started) this._connect();
    }
  }

  /** One renewal at a time; a 401 for a token already replaced just retries. */
  _renewSession(staleToken, why) {
    if (this._renewing) return this._renewing;
    if (staleToken !== this.token) return Promise.resolve();
    const renewal = this.options.getToken ? this._takeAppToken(true, why) : this._newSession(true, why);
    this._renewing = renewal.finally(() => {
      this._renewing = null;
    });
    return this._renewing;
  }

  /** Asks the app for its token (option getToken). A token for another user than before
   *  starts the bookkeeping afresh, as a new session does. */
  async _takeAppToken(renewed, why = '') {
    let token;
    try {
      token = await this.options.getToken();
    } catch (err) {
      throw new PushskipError(401, `getToken() failed: ${err?.message ?? err}`);
    }
    if (typeof token !== 'string' || !token) throw new PushskipError(401, 'getToken() gave no token');
    const userId = tokenSubject(token);
    const previous = this.userId;
    const otherUser = userId !== null && previous !== null && userId !== previous;
    this.token = token;
    if (userId !== null) this.userId = userId;
    if (otherUser || (previous === null && userId === null)) {
      this.lastSeq = 0;
      this.epoch = null;
      this._snapshotSeq = 0;
      this._snapshotEpoch = null;
    }
    this.stats.sessions++;
    this._save();
    if (renewed) this._log(`token renewed by getToken() (${why})`, 'warn');
    this._emit('session', { userId: this.userId, previous, renewed, resumed: !otherUser && previous !== null });
    if (renewed && otherUser) {
      this._stateVersion++;
      this._setState('idle', null, 'session');
    }
    if (renewed && this._ws) this._dropSocket('new token');
    if (renewed && this.started) this._connect();
  }

  _load() {
    const storage = this.options.storage;
    if (!storage) return;
    try {
      const saved = JSON.parse(storage.getItem(this.options.storageKey) || 'null');
      if (saved && typeof saved.token === 'string') {
        this.userId = saved.userId;
        this.token = saved.token;
        // A seq means nothing without its epoch: none stored, resume from the start.
        this.epoch = typeof saved.epoch === 'string' ? saved.epoch : null;
        this.lastSeq = this.epoch !== null && Number.isInteger(saved.lastSeq) ? saved.lastSeq : 0;
        this.wantMatch = Boolean(saved.wantMatch);
      }
    } catch {
      /* unreadable: start afresh */
    }
  }

  _save() {
    const storage = this.options.storage;
    if (!storage || !this.token) return;
    try {
      storage.setItem(
        this.options.storageKey,
        JSON.stringify({
          userId: this.userId,
          token: this.token,
          lastSeq: this.lastSeq,
          epoch: this.epoch,
          wantMatch: this.wantMatch,
        }),
      );
    } catch {
      /* storage full or blocked: the session just does not survive a reload */
    }
  }

  // ---- transport ----------------------------------------------------------

  _setTransport(transport, reason = '') {
    if (transport === this.transport) return;
    this.transport = transport;
    this._emit('transport', { transport, reason });
  }

  _wsUrl() {
    const url = new URL(this.baseUrl + '/ws');
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('token', this.token);
    url.searchParams.set('after', String(this.lastSeq));
    if (this.epoch !== null) url.searchParams.set('epoch', this.epoch);
    return url.toString();
  }

  _connect() {
    if (!this.started || this._stopped || !this.socketEnabled || this._ws || !this.token) return;
    clearTimeout(this._timers.reconnect);
    let ws;
    try {
      ws = new WebSocket(this._wsUrl());
    } catch (err) {
      this._onSocketGone(null, err.message);
      return;
    }
    this._ws = ws;
    this._wsReady = false;
    this._lastMessageAt = clock();
    if (this.transport !== 'polling') this._setTransport('connecting');
    ws.onmessage = (e) => this._onSocketMessage(ws, e);
    ws.onclose = (e) => {
      if (this._ws === ws) this._onSocketGone(e.code, e.reason);
    };
    ws.onerror = () => {}; // a close event follows
  }

  _onSocketMessage(ws, e) {
    const receivedAt = clock();
    if (ws !== this._ws) return;
    this._lastMessageAt = receivedAt;
    let message;
    try {
      message = JSON.parse(e.data);
    } catch {
      return;
    }
    if (!message || typeof message !== 'object') return;
    if (message.type === 'hello') {
      // The first on this socket, or a later one (the log was lost meanwhile).
      if (!this._wsReady) {
        this._wsReady = true;
        this._wsAttempt = 0;
        this._socketAuthFailures = 0;
        this._stopPolling();
        this._setTransport('websocket');
        this._startHeartbeat();
      }
      if (typeof message.userId === 'string' && this.userId !== message.userId) {
        this.userId = message.userId;
        this._save();
      }
      if (Number.isInteger(message.pollIntervalMs) && message.pollIntervalMs > 0) {
        this.pollIntervalMs = message.pollIntervalMs;
      }
      const otherLog = this.epoch !== null && message.epoch !== undefined && message.epoch !== this.epoch;
      if (otherLog && message.reset !== true) {
        this._log(`hello names epoch ${message.epoch}, ours is ${this.epoch}, without a reset`, 'warn');
      }
      if (message.reset === true || otherLog) {
        this._reset(message, 'websocket');
      } else {
        this._adoptEpoch(message.epoch);
        this._applySnapshot(message.state, message.match, message.lastSeq, message.epoch, 'hello');
      }
    } else if (message.type === 'pong') {
      // liveness only
    } else if (message.type === 'reply') {
      this._onReply(message, receivedAt);
    } else if (Number.isInteger(message.seq)) {
      this._ingest([message], 'websocket', receivedAt);
    }
  }

  _onSocketGone(code, reason) {
    this._ws = null;
    this._wsReady = false;
    if (this._pending.size) this._loseAllReplies(`the socket closed before the reply${reason ? ` (${reason})` : ''}`);
    clearInterval(this._timers.heartbeat);
    if (this._stopped || !this.started) return;
    this._log(`socket closed${code ? ` (${code}${reason ? `: ${reason}` : ''})` : reason ? ` (${reason})` : ''}`);
    this._setTransport('polling', reason || String(code ?? ''));
    this._startPolling(true);
    if (code === 4401) {
      if (++this._socketAuthFailures > 1) {
        // The token it was given after the last 4401 is refused too: give up the socket.
        this._log('socket: the renewed token is refused too; polling only', 'warn');
        this._emit('auth-failed', { status: 4401, message: reason, via: 'socket' });
        return;
      }
      this._renewSession(this.token, 'socket: bad token').catch((err) => {
        this._emit('auth-failed', { status: 4401, message: err.message, via: 'socket' });
        this._scheduleReconnect();
      });
    } else if (code === 4403 && reason === 'banned') {
      this._log('the app banned this user: stopping', 'warn');
      this.stop();
      this._emit('banned', { reason });
    } else if (code === 4403) {
      this._log('this origin may not open the socket: polling only', 'warn');
    } else if (this.socketEnabled) {
      this._scheduleReconnect();
    }
  }

  _dropSocket(reason) {
    const ws = this._ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000, reason);
    } catch {
      /* already closing */
    }
    this._onSocketGone(null, reason);
  }

  _scheduleReconnect() {
    clearTimeout(this._timers.reconnect);
    const delay = this._backoff(this._wsAttempt);
    this._wsAttempt = Math.min(this._wsAttempt + 1, 20);
    this.stats.reconnects++;
    this._log(`reconnecting in ${Math.round(delay)} ms`);
    this._timers.reconnect = setTimeout(() => this._connect(), delay);
  }

  _startHeartbeat() {
    clearInterval(this._timers.heartbeat);
    this._timers.heartbeat = setInterval(() => {
      const ws = this._ws;
      if (!ws || !this._wsReady) return;
      if (clock() - this._lastMessageAt > this.options.heartbeatMs + this.options.heartbeatTimeoutMs) {
        this._dropSocket('no answer to pings');
        return;
      }
      try {
        ws.send('{"type":"ping"}');
      } catch {
        /* closing; onclose handles it */
      }
    }, this.options.heartbeatMs);
  }

  _startPolling(immediate) {
    if (this._polling) {
      if (immediate) this._schedulePoll(0);
      return;
    }
    this._polling = true;
    this._pollFailures = 0;
    this._schedulePoll(immediate ? 0 : this.pollIntervalMs);
  }

  _stopPolling() {
    this._polling = false;
    clearTimeout(this._timers.poll);
  }

  _schedulePoll(delay) {
    clearTimeout(this._timers.poll);
    this._timers.poll = setTimeout(() => this._poll(), delay);
  }

  async _poll() {
    if (!this._polling || this._stopped || this._wsReady) return;
    const startedAt = clock();
    let delay = this.pollIntervalMs;
    try {
      const logVersion = this._logVersion;
      const query = new URLSearchParams({ after: String(this.lastSeq) });
      if (this.epoch !== null) query.set('epoch', this.epoch);
      const body = await this._request('GET', `/api/simple-matching/events?${query}`, undefined, {
        retries: 0,
      });
      const receivedAt = clock();
      this.stats.polls++;
      this.timings.lastPollAt = receivedAt;
      this._pollFailures = 0;
      if (!this._wsReady) this._setTransport('polling');
      if (logVersion !== this._logVersion) {
        // The socket moved us to another log while this poll was out: the
        // answer is about the one before, so it is left to the socket (or the next poll).
      } else if (body.reset === true) {
        this._reset(body, 'polling');
        this._ingest(body.events || [], 'polling', receivedAt);
      } else {
        this._adoptEpoch(body.epoch);
        this._ingest(body.events || [], 'polling', receivedAt);
      }
    } catch (err) {
      this._pollFailures++;
      delay = Math.min(this.options.pollBackoffMaxMs, this.pollIntervalMs * 2 ** this._pollFailures);
      this._log(`poll failed (${err.message}); next in ${Math.round(delay)} ms`, 'warn');
    }
    if (this._polling && !this._wsReady) this._schedulePoll(Math.max(0, delay - (clock() - startedAt)));
  }
}

export default PushskipClient;
