// A typed app using the browser client with its own users: what a TypeScript app
// writes, compiled by `tsc` against static/pushskip.d.ts (scripts/check).
import PushskipDefault, {
  PushskipClient,
  PushskipError,
  clock,
  tokenSubject,
  type Match,
  type PartnerLeftEvent,
  type State,
} from '../../static/pushskip.js';

async function tokenFromMyBackend(): Promise<string> {
  const response = await fetch('/my-backend/pushskip-token', { credentials: 'include' });
  const body = (await response.json()) as { token: string };
  return body.token;
}

const client = new PushskipClient({
  baseUrl: 'https://chat.example',
  storage: sessionStorage,
  getToken: tokenFromMyBackend,
  actionsOverSocket: true,
});
const same: PushskipClient = new PushskipDefault();
void same;

function render(state: State, match: Match | null): string {
  return match ? `${state}: ${match.roomName} with ${match.partnerId}` : state;
}

const off = client.on('state', ({ state, match, previous, event }) => {
  console.log(render(state, match), 'was', previous, event?.type);
});
client.on('matched', (event, meta) => {
  const room: string = event.match.roomName;
  console.log(room, meta.via, meta.replay, event.seq, event.at);
  const media = event.match.media;
  if (media) console.log(`join ${media.provider} at ${media.url} with`, media.token.length);
});
client.on('partner-skipped', (event) => console.log(event.skippedBy, event.roomName));
client.on('partner-left', (event: PartnerLeftEvent) => {
  const why: 'left' | 'disconnected' | 'removed' = event.reason;
  console.log(why);
});
client.on('banned', ({ reason }) => console.warn('banned:', reason));
client.on('auth-failed', ({ status, via }) => console.warn(status, via));
client.on('reset', ({ epoch, lastSeq }) => console.log(epoch ?? 'no log', lastSeq));
client.on('transport', ({ transport }) => console.log(transport));
off();

async function main(): Promise<void> {
  await client.start();
  const queued = await client.enqueue();
  if (queued.status === 'matched' && queued.match) console.log(queued.match.user1);
  try {
    const skipped = await client.skip({ requeue: true });
    console.log(skipped.skipped, skipped.via, skipped.rttMs.toFixed(1));
  } catch (err) {
    if (err instanceof PushskipError && err.outcomeUnknown) await err.reconciled;
  }
  const left = await client.leave();
  console.log(left.roomName, client.userId, client.state, client.timings.lastSkip?.rttMs);
  const status = await client.refresh();
  console.log(status.lastSeq, status.epoch, clock(), tokenSubject(client.token));
  client.setSocketEnabled(false);
  client.stop();
}

void main();
