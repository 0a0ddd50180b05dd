"""Every Redis key name, channel name and TTL in one place.

The flag keys and their TTLs are the seed's (see API.md, Skip) and must not
change: old clients and tools read them. Flag *values* name the room the flag
was set for, so a flag for room R never poisons a later room of the same user.

Deployment forms (API.md, Redis deployments): on one server and behind
Sentinel the names are the seed's. In a Redis Cluster every key and channel
carries the hash tag `{pushskip}` in front (`{pushskip}match:u_...`), so all of
pushskip's state lives in one hash slot and every Lua step stays one atomic
step on one node; `use_tag()` sets that for the process (`redisform.py` calls
it for the REDIS_URL it connects to), and events are published with
SPUBLISH (sharded pub/sub) instead of PUBLISH.
"""

from __future__ import annotations

# Seed flags and their TTLs, in seconds.
PRE_SKIP = "pre-skip:"
SKIP_IN_PROGRESS = "skip-in-progress:"
FORCE_DISCONNECT = "force-disconnect:"
ROOM_DELETED = "room-deleted:"
SKIP_NOTIFICATION = "skip-notification:"
PRE_SKIP_TTL_S = 30
SKIP_IN_PROGRESS_TTL_S = 60
FORCE_DISCONNECT_TTL_S = 300
ROOM_DELETED_TTL_S = 300
SKIP_NOTIFICATION_TTL_S = 300

MATCH = "match:"
# A match outlives any real chat; the TTL only reclaims pairs whose users vanished.
MATCH_TTL_S = 24 * 3600

# Waiting users, oldest first (score: enqueued-at ms) and when each last showed
# life (score: ms). An entry not seen for queue_stale_s is never matched.
QUEUE = "simple-matching:queue"
QUEUE_SEEN = "simple-matching:queue-seen"
# How many queue entries one enqueue looks at before giving up (bounds Lua time),
# and how many first users of a pair it tries.
PAIRING_SCAN_LIMIT = 200
PAIRING_TRIES = 8
# Fair queuing by client address (lua/lib.lua: join_queue): the users each
# address has waiting, who waits from where, and since when.
WAITING_FROM = "simple-matching:waiting-from:"
QUEUE_ADDRESS = "simple-matching:queue-address"
QUEUED_AT = "simple-matching:queued-at"
FAIR_SLOT_MS = 2000
# Two waiting users from different addresses meet when their places are this
# close, or once the earlier one has waited this long.
FAIR_WINDOW_MS = 1000
FAIR_PATIENCE_MS = 3000
QUEUE_KEEP_MS = 24 * 3600 * 1000
# Sessions minted per client address in the current minute.
SESSION_RATE = "session-rate:"
# Enqueues per client address (lua/lib.lua: take_enqueue): a token bucket, in
# thousandths of an enqueue, and when it was last filled (ms).
ENQUEUE_RATE = "enqueue-rate:"
# Fairness by recent activity (lua/lib.lua: join_queue): the users each address
# queued in the last ACTIVITY_WINDOW_MS (score: when, ms). Each other one of
# them queues the address's next user FAIR_SLOT_MS further back, up to
# FAIR_MAX_SLOTS slots in all (with the users it has waiting).
RECENT_FROM = "simple-matching:recent-from:"
ACTIVITY_WINDOW_MS = 10_000
FAIR_MAX_SLOTS = 60
# How long an address's enqueue allowance and recent users are kept after its last
# enqueue (what they hold is current for less; longer only saves rewriting them).
LIMITS_KEEP_MS = 60_000

# Rooms with a match now (score: matchedAt ms), for the server API's stats.
ROOMS = "simple-matching:rooms"

# banned:{user}: set by the server API's ban (value: until when, ms), kept for its length.
BANNED = "banned:"

# The outbox (outbox.py): per delivery target, the entries to deliver after the
# Lua step that recorded them. outbox:{target}:entries (id -> JSON),
# :due (id -> next attempt ms), :recorded (id -> ms), :attempts (id -> n),
# :next (id -> the entry that waits for it: a room's match.ended for its match.created).
OUTBOX = "outbox:"
WEBHOOK_TARGET = "webhook"
LIVEKIT_TARGET = "livekit"

# Media presence (API.md, Media rooms): users who left their match's media room
# (score: when their grace ends, ms), and which room each left.
MEDIA_DEADLINES = "media:deadlines"
MEDIA_LEFT_ROOM = "media:left-room"

# rematch-cooldown:{a}:{b} with a < b: set by a skip, blocks re-pairing a and b.
REMATCH_COOLDOWN = "rematch-cooldown:"

# Per-user event log: a stream whose entry ids are "<seq>-0", its counter, and
# its epoch (a new one whenever the log starts anew; API.md, Epochs). The three
# expire together, a retention (PUSHSKIP_LOG_RETENTION_S) after the last event.
EVENT_LOG = "events:"
EVENT_SEQ = "events-seq:"
EVENT_EPOCH = "events-epoch:"
# The log keeps at least its last 100 events, each for at least 300 s.
EVENT_LOG_MIN_EVENTS = 100
EVENT_LOG_MIN_AGE_MS = 300_000

# Presence (API.md, Presence): live processes (member: process id, score:
# lease expiry ms), each process's users with an open socket there, and users
# whose presence must be checked at a deadline (score: ms). Their TTL only
# reclaims them after every process is gone; the lease and sweep keep them.
PRESENCE_PROCS = "presence:procs"
PRESENCE_SOCKETS = "presence:sockets:"
PRESENCE_DEADLINES = "presence:deadlines"
# Open sockets per live process (field: process id), renewed with its lease: the stats.
PRESENCE_COUNTS = "presence:socket-counts"
PRESENCE_KEEP_MS = 24 * 3600 * 1000

# Pub/sub channels (a namespace apart from keys).
USER_CHANNEL = "pushskip:user:"
PROBE_CHANNEL = "pushskip:probe:"


# The names above as the seed has them; `use_tag` puts a hash tag in front of each.
TAGGED = (
    "PRE_SKIP", "SKIP_IN_PROGRESS", "FORCE_DISCONNECT", "ROOM_DELETED", "SKIP_NOTIFICATION",
    "MATCH", "QUEUE", "QUEUE_SEEN", "WAITING_FROM", "QUEUE_ADDRESS", "QUEUED_AT",
    "SESSION_RATE", "ENQUEUE_RATE", "RECENT_FROM", "ROOMS", "BANNED", "OUTBOX",
    "MEDIA_DEADLINES", "MEDIA_LEFT_ROOM", "REMATCH_COOLDOWN", "EVENT_LOG", "EVENT_SEQ",
    "EVENT_EPOCH", "PRESENCE_PROCS", "PRESENCE_SOCKETS", "PRESENCE_DEADLINES",
    "PRESENCE_COUNTS", "USER_CHANNEL", "PROBE_CHANNEL",
)
SEED_NAMES = {name: globals()[name] for name in TAGGED}
CLUSTER_TAG = "{pushskip}"
# The hash tag in front of every name ("" on one server and behind Sentinel), and the
# command the Lua steps publish events with.
TAG = ""
PUBLISH = "PUBLISH"


def use_tag(tag: str) -> None:
    """Put `tag` in front of every key and channel name of this process ("" for the seed's
    names); with a tag, events go out with SPUBLISH. Set once, before scripts are loaded."""
    global TAG, PUBLISH
    for name in TAGGED:
        globals()[name] = tag + SEED_NAMES[name]
    TAG = tag
    PUBLISH = "SPUBLISH" if tag else "PUBLISH"


def match(user_id: str) -> str:
    return MATCH + user_id


def event_log(user_id: str) -> str:
    return EVENT_LOG + user_id


def event_seq(user_id: str) -> str:
    return EVENT_SEQ + user_id


def event_epoch(user_id: str) -> str:
    return EVENT_EPOCH + user_id


def user_channel(user_id: str) -> str:
    return USER_CHANNEL + user_id


def user_from_channel(channel: str) -> str | None:
    if channel.startswith(USER_CHANNEL):
        return channel[len(USER_CHANNEL) :]
    return None


def banned(user_id: str) -> str:
    return BANNED + user_id


def outbox(target: str, part: str) -> str:
    return f"{OUTBOX}{target}:{part}"


def presence_sockets(process_id: str) -> str:
    return PRESENCE_SOCKETS + process_id


def rematch_cooldown(a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"{REMATCH_COOLDOWN}{lo}:{hi}"


def lua_constants(log_retention_ms: int, outbox_targets: frozenset[str] = frozenset()) -> str:
    """The Lua prelude that gives every script the same names as this module, and says
    which outbox targets the steps record entries for (none: nothing is recorded)."""
    values: dict[str, str | int | bool] = {
        "PUBLISH_CMD": PUBLISH,
        "K_ROOMS": ROOMS,
        "K_BANNED": BANNED,
        "K_OUTBOX": OUTBOX,
        "OUTBOX_WEBHOOK": WEBHOOK_TARGET in outbox_targets,
        "OUTBOX_LIVEKIT": LIVEKIT_TARGET in outbox_targets,
        "K_MEDIA_DEADLINES": MEDIA_DEADLINES,
        "K_MEDIA_LEFT_ROOM": MEDIA_LEFT_ROOM,
        "K_MATCH": MATCH,
        "K_PRE_SKIP": PRE_SKIP,
        "K_SKIP_IN_PROGRESS": SKIP_IN_PROGRESS,
        "K_FORCE_DISCONNECT": FORCE_DISCONNECT,
        "K_ROOM_DELETED": ROOM_DELETED,
        "K_SKIP_NOTIFICATION": SKIP_NOTIFICATION,
        "K_QUEUE": QUEUE,
        "K_QUEUE_SEEN": QUEUE_SEEN,
        "K_QUEUE_ADDRESS": QUEUE_ADDRESS,
        "K_QUEUED_AT": QUEUED_AT,
        "FAIR_WINDOW_MS": FAIR_WINDOW_MS,
        "FAIR_PATIENCE_MS": FAIR_PATIENCE_MS,
        "K_WAITING_FROM": WAITING_FROM,
        "K_SESSION_RATE": SESSION_RATE,
        "K_ENQUEUE_RATE": ENQUEUE_RATE,
        "K_RECENT_FROM": RECENT_FROM,
        "ACTIVITY_WINDOW_MS": ACTIVITY_WINDOW_MS,
        "FAIR_MAX_SLOTS": FAIR_MAX_SLOTS,
        "LIMITS_KEEP_MS": LIMITS_KEEP_MS,
        "FAIR_SLOT_MS": FAIR_SLOT_MS,
        "QUEUE_KEEP_MS": QUEUE_KEEP_MS,
        "PAIR_TRIES": PAIRING_TRIES,
        "K_COOLDOWN": REMATCH_COOLDOWN,
        "K_LOG": EVENT_LOG,
        "K_SEQ": EVENT_SEQ,
        "K_EPOCH": EVENT_EPOCH,
        "K_CHANNEL": USER_CHANNEL,
        "K_PRESENCE_PROCS": PRESENCE_PROCS,
        "K_PRESENCE_SOCKETS": PRESENCE_SOCKETS,
        "K_PRESENCE_DEADLINES": PRESENCE_DEADLINES,
        "K_PRESENCE_COUNTS": PRESENCE_COUNTS,
        "PRESENCE_KEEP_MS": PRESENCE_KEEP_MS,
        "PRE_SKIP_TTL": PRE_SKIP_TTL_S,
        "SKIP_IN_PROGRESS_TTL": SKIP_IN_PROGRESS_TTL_S,
        "FORCE_DISCONNECT_TTL": FORCE_DISCONNECT_TTL_S,
        "ROOM_DELETED_TTL": ROOM_DELETED_TTL_S,
        "SKIP_NOTIFICATION_TTL": SKIP_NOTIFICATION_TTL_S,
        "MATCH_TTL": MATCH_TTL_S,
        "SCAN_LIMIT": PAIRING_SCAN_LIMIT,
        "LOG_MIN_EVENTS": EVENT_LOG_MIN_EVENTS,
        "LOG_MIN_AGE_MS": EVENT_LOG_MIN_AGE_MS,
        "LOG_RETENTION_MS": log_retention_ms,
    }
    lines = []
    for name, value in values.items():
        if isinstance(value, bool):
            literal = "true" if value else "false"
        else:
            literal = repr(value) if isinstance(value, str) else str(value)
        lines.append(f"local {name} = {literal}")
    return "\n".join(lines) + "\n"
