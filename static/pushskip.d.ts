// Types of pushskip.js, the browser client of a pushskip server (see its header comment
// and the README). `import { PushskipClient } from './pushskip.js'` picks these up.

export type State = 'idle' | 'waiting' | 'matched';
export type Transport = 'offline' | 'connecting' | 'websocket' | 'polling';
export type Via = 'socket' | 'http';

/** The media room of a match, when the server has a media provider (LiveKit). */
export interface MediaGrant {
  provider: 'livekit';
  /** The media server to connect to. */
  url: string;
  /** This user's token for this match's room only. */
  token: string;
}

export interface Match {
  roomName: string;
  user1: string;
  user2: string;
  partnerId: string;
  matchedAt: number;
  media?: MediaGrant;
}

interface EventBase {
  seq: number;
  /** Server time (epoch ms) the event was logged. */
  at: number;
  /** The event log this seq counts in. */
  epoch?: string;
}

export interface MatchedEvent extends EventBase {
  type: 'matched';
  match: Match;
}

export interface PartnerSkippedEvent extends EventBase {
  type: 'partner-skipped';
  roomName: string;
  skippedBy: string;
}

export interface PartnerLeftEvent extends EventBase {
  type: 'partner-left';
  roomName: string;
  /** left: an explicit leave; disconnected: the partner vanished; removed: your backend did it. */
  reason: 'left' | 'disconnected' | 'removed';
}

export type ServerEvent = MatchedEvent | PartnerSkippedEvent | PartnerLeftEvent;

export interface EventMeta {
  via: 'websocket' | 'polling';
  /** clock() when the client had it. */
  receivedAt: number;
  /** Already reflected in the state the client was given (a replay). */
  replay: boolean;
  serverAgeMs: number | null;
}

export interface StateChange {
  state: State;
  match: Match | null;
  previous: State;
  reason: string;
  event: ServerEvent | null;
}

export interface SessionChange {
  userId: string | null;
  previous?: string | null;
  renewed: boolean;
  resumed: boolean;
}

export interface ResetInfo {
  epoch: string | null;
  previous: string | null;
  state: State;
  match: Match | null;
  lastSeq: number;
  via: 'websocket' | 'polling';
}

export interface LogLine {
  message: string;
  level: 'info' | 'warn';
  at: number;
}

export interface AuthFailure {
  /** 401 (HTTP or a socket reply), or 4401 (the socket). */
  status: number;
  message: string;
  via: 'http' | 'socket';
}

export interface ClientEvents {
  matched: (event: MatchedEvent, meta: EventMeta) => void;
  'partner-skipped': (event: PartnerSkippedEvent, meta: EventMeta) => void;
  'partner-left': (event: PartnerLeftEvent, meta: EventMeta) => void;
  event: (event: ServerEvent, meta: EventMeta) => void;
  state: (change: StateChange) => void;
  transport: (change: { transport: Transport; reason: string }) => void;
  session: (change: SessionChange) => void;
  'skip-sent': (sent: { roomName: string | null; sentAt: number; via: Via }) => void;
  reset: (info: ResetInfo) => void;
  log: (line: LogLine) => void;
  /** The app's backend banned this user: the client has stopped. */
  banned: (info: { reason: string }) => void;
  /** The token was refused and a renewed one did not help. */
  'auth-failed': (failure: AuthFailure) => void;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface PushskipOptions {
  /** Default: the page's origin. */
  baseUrl?: string;
  pollIntervalMs?: number;
  keepAliveMs?: number;
  requeue?: boolean;
  autoRequeue?: boolean;
  /** e.g. sessionStorage: keeps token, lastSeq, epoch and intent across reloads. */
  storage?: StorageLike | null;
  storageKey?: string;
  socket?: boolean;
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
  pollBackoffMaxMs?: number;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  requestTimeoutMs?: number;
  startTimeoutMs?: number;
  maxRetries?: number;
  actionsOverSocket?: boolean;
  actionTimeoutMs?: number;
  leaveOnPageHide?: 'auto' | boolean;
  /** Your backend's token for your user (a JWT whose `sub` is the user id), instead of
   *  POST /api/session; called at start() and again when the server refuses the token. */
  getToken?: (() => Promise<string>) | null;
}

export interface ActionResult {
  via: Via;
  sentAt: number;
  rttMs: number;
}

export interface EnqueueResult extends ActionResult {
  success: true;
  status: 'waiting' | 'matched';
  match?: Match;
}

export interface SkipResult extends ActionResult {
  success: true;
  skipped: boolean;
  roomName?: string;
  status?: State;
  match?: Match | null;
  message?: string;
}

export interface LeaveResult extends ActionResult {
  success: true;
  left: boolean;
  roomName: string | null;
}

export interface StatusResult {
  success: true;
  state: State;
  match: Match | null;
  lastSeq: number;
  epoch: string | null;
}

export interface Timings {
  lastSkip: { roomName: string | null; sentAt: number; rttMs: number | null; via: Via; outcomeUnknown?: boolean } | null;
  lastAction: { name: string; via: Via; sentAt: number; rttMs: number } | null;
  lastNotified: {
    type: string;
    roomName: string;
    reason: string | null;
    receivedAt: number;
    via: string;
    at: number;
  } | null;
  httpRttMs: number | null;
  socketRttMs: number | null;
  lastPollAt: number | null;
  pageHideLeave: { at: number; via: 'beacon' | 'fetch'; state: State } | null;
}

export interface Stats {
  delivered: number;
  duplicates: number;
  otherEpoch: number;
  resets: number;
  polls: number;
  reconnects: number;
  sessions: number;
  actionsViaSocket: number;
  actionsViaHttp: number;
  repliesLost: number;
}

export declare class PushskipError extends Error {
  constructor(status: number, message: string, body?: unknown);
  /** HTTP status; 0 for a network failure or a timeout. */
  status: number;
  body: unknown;
  via?: Via;
  /** A skip whose answer was lost: it may have run; `reconciled` resolves once status was read. */
  outcomeUnknown?: boolean;
  reconciled?: Promise<void>;
}

export declare class PushskipClient {
  constructor(options?: PushskipOptions);
  readonly options: Required<Omit<PushskipOptions, 'baseUrl' | 'storage' | 'getToken'>> &
    Pick<PushskipOptions, 'storage' | 'getToken'>;
  readonly baseUrl: string;
  userId: string | null;
  token: string | null;
  lastSeq: number;
  epoch: string | null;
  state: State;
  match: Match | null;
  transport: Transport;
  pollIntervalMs: number;
  socketEnabled: boolean;
  wantMatch: boolean;
  started: boolean;
  timings: Timings;
  stats: Stats;

  on<K extends keyof ClientEvents>(type: K, handler: ClientEvents[K]): () => void;
  off<K extends keyof ClientEvents>(type: K, handler: ClientEvents[K]): void;
  start(): Promise<void>;
  stop(): void;
  forget(): void;
  setSocketEnabled(enabled: boolean): void;
  enqueue(): Promise<EnqueueResult>;
  skip(options?: { requeue?: boolean }): Promise<SkipResult>;
  leave(): Promise<LeaveResult>;
  refresh(): Promise<StatusResult>;
}

/** Milliseconds on a clock shared by every tab of this machine. */
export declare function clock(): number;

/** The `sub` of a JWT (unverified), or null for any other token. */
export declare function tokenSubject(token: string | null | undefined): string | null;

export default PushskipClient;
