"""Several bbb-lb processes on one Redis behave as one LB: what they share beyond the store's tables.

Built only on the Redis store (``store.backend: redis``); the embedded TinyDB store is one process and
none of this runs. Every key starts with the store's prefix:

- ``{prefix}:node:{node}``: one per live process (a heartbeat with a TTL), read by the dashboard;
- ``{prefix}:poller``: the lease of the one process that polls the servers (``SET NX PX``, renewed by
  its holder; a holder that dies loses it after ``LEASE_S`` and another takes over);
- ``{prefix}:pool``: the poller's last view of every server (health, meetings, load, voice bridges),
  which the other processes apply at each poll interval;
- ``{prefix}:placed:{server}``: creates placed on a server and not yet seen by a poll (a sorted set by
  time), read and added to in one Lua script, so creates on two processes at once see each other;
- ``{prefix}:create:{key}``: the create lock of a meeting (``SET NX PX`` with a token);
- ``{prefix}:voice:{server}``: voice bridges in use on a server (a sorted set, bridge -> when a create
  claimed it); after each poll the poller makes it what the server showed plus what the LB's live meetings
  hold plus recent claims (``{prefix}:voice-servers`` lists the servers having one);
- ``{prefix}:changes``: pub/sub; a meeting created or ended, servers or integrations changed by an
  operator: every process drops what it cached about it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from lb_core.pool import Server
from lb_core.store import StoreUnavailable
from lb_core.store_redis import RedisStore

log = logging.getLogger("bbb_lb.cluster")

LEASE_S = 5.0  # a dead poller is replaced within this
HEARTBEAT_TTL_S = 10.0  # a process missing for this long leaves the dashboard
CREATE_LOCK_S = 30.0  # longer than a create with failover takes; a dead holder frees it after this
PLACED_WINDOW_S = 60.0  # a create no poll has seen counts in placement at most this long
STOP_S = 2.0  # the longest a stop waits for one step that needs Redis (a task to end, a command)
REDIS_STOP_S = 6.0  # ...and for all of them: with the 10 s drain, within the unit's TimeoutStopSec=20
LAST_STEP_S = 0.1  # a step once that is spent
VOICE_CLAIM_GRACE_S = CREATE_LOCK_S  # a claimed voice bridge no poll shows yet is kept this long

# Renew the lease only if this process still holds it (never extend another's).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# Free a lock only if this process still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# One server's voice bridges follow reality. KEYS: its sorted set (bridge -> claimed at, 0 for a bridge
# only a poll saw), the set of servers having one, the set of older versions. ARGV: the server, the grace
# cutoff, then every bridge in use. Those stay (added if missing); any other goes unless claimed after the
# cutoff. An emptied set is gone, and the server leaves the list. Answers how many were removed.
_PRUNE_BRIDGES = """
local keep = {}
for i = 3, #ARGV do
  keep[ARGV[i]] = true
  redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i])
end
local removed = 0
for _, bridge in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])) do
  if not keep[bridge] then
    redis.call('ZREM', KEYS[1], bridge)
    removed = removed + 1
  end
end
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return removed
"""

# Pick-and-increment in one step. KEYS: the placed set of each candidate, in the caller's order.
# ARGV: now, window start, cost of one placed create, the member to add, then (base score, weight) per
# candidate. Each score is the caller's (polled load per weight) plus the creates every process placed
# there and no poll has seen yet; the lowest wins (first in order on a tie) and gets this create.
_PLACE = """
local now, since, cost, member = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local best, best_score = 0, nil
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. since)
  local placed = redis.call('ZCARD', key)
  local score = tonumber(ARGV[3 + 2 * i]) + placed * cost / tonumber(ARGV[4 + 2 * i])
  if best_score == nil or score < best_score then best, best_score = i, score end
end
redis.call('ZADD', KEYS[best], now, member)
redis.call('PEXPIRE', KEYS[best], math.floor((now - since) * 1000) + 1000)
return best
"""


class StopBudget:
    """What a stop may still spend waiting on Redis: each step at most ``STOP_S`` and never more than is left
    of ``REDIS_STOP_S`` for them all, so the whole is bounded however many steps there are (a step past the
    budget still gets ``LAST_STEP_S``: a Redis that answers is not skipped)."""

    def __init__(self, seconds: float = REDIS_STOP_S) -> None:
        self.deadline = time.monotonic() + seconds

    def step(self, most: float = STOP_S) -> float:
        return max(LAST_STEP_S, min(most, self.deadline - time.monotonic()))


async def stop_task(task: asyncio.Task[None], within: float = STOP_S) -> None:
    """Cancel ``task`` and give it ``within`` to end: a stop never hangs on a Redis client's cleanup."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        log.warning("%s did not stop within %.1f s; left behind", task.get_name(), within)


def new_node_id() -> str:
    """This process among all: host, pid and a random part (a restarted process is a new node)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def server_view(server: Server) -> dict[str, Any]:
    """What the poller learnt of a server, for the other processes (``apply_view``)."""
    return {
        "status": int(server.status), "failures": server.consecutive_failures,
        "successes": server.consecutive_successes, "error": server.last_error, "polled": server.last_poll_at,
        "errors": server.poll_errors_total, "bridges": sorted(server.voice_bridges),
        "meetings": {m: [load.participants, load.voice, load.video] for m, load in server.meetings.items()},
    }


class Cluster:
    """This process's part of a group of bbb-lb processes sharing one Redis."""

    def __init__(self, store: RedisStore, node_id: str | None = None) -> None:
        self.store = store
        self.redis = store.redis
        self.node_id = node_id or new_node_id()
        self.started_at = time.time()
        self.leader = False
        self.changes_channel = store.key("changes")
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._place = self.redis.register_script(_PLACE)
        self._prune_bridges = self.redis.register_script(_PRUNE_BRIDGES)
        self._listener: asyncio.Task[None] | None = None
        self.on_change: Callable[[str, str], Awaitable[None]] | None = None
        self.changes_seen = 0

    async def _call(self, work: Awaitable[Any]) -> Any:
        return await self.store._call(work)

    # --- heartbeats: who is alive -------------------------------------------------------------

    async def beat(self, info: dict[str, Any]) -> None:
        doc = {"node": self.node_id, "pid": os.getpid(), "host": socket.gethostname(), "leader": self.leader,
               "started_at": self.started_at, "seen_at": time.time(), **info}
        await self._call(self.redis.set(self.store.key("node", self.node_id), json.dumps(doc),
                                        px=int(HEARTBEAT_TTL_S * 1000)))

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live process (its last heartbeat), this one included."""
        names = [name async for name in self.store._scan(self.store.key("node", "*"))]
        if not names:
            return []
        docs = await self._call(self.redis.mget(names))
        return sorted((json.loads(d) for d in docs if d), key=lambda d: (d.get("host", ""), d.get("node", "")))

    async def leave(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._call(self.redis.delete(self.store.key("node", self.node_id)))
            if self.leader:
                await self._call(self._release(keys=[self.store.key("poller")], args=[self.node_id]))
        self.leader = False

    # --- the poller lease ---------------------------------------------------------------------

    async def hold_lease(self) -> bool:
        """Take or renew the poller lease; True while this process is the poller."""
        try:
            held = await self._call(self._renew(keys=[self.store.key("poller")],
                                                args=[self.node_id, int(LEASE_S * 1000)]))
        except StoreUnavailable as exc:
            if self.leader:
                log.warning("poller lease not renewed (%s): polling stops here until Redis answers", exc)
            self.leader = False
            return False
        was, self.leader = self.leader, bool(held)
        if self.leader != was:
            log.info("%s %s the poller", self.node_id, "is now" if self.leader else "is no longer")
        return self.leader

    async def poller(self) -> str | None:
        return await self._call(self.redis.get(self.store.key("poller")))

    # --- the shared view of the pool -----------------------------------------------------------

    async def publish_pool(self, servers: list[Server]) -> None:
        view = {"at": time.time(), "by": self.node_id, "servers": {s.name: server_view(s) for s in servers}}
        await self._call(self.redis.set(self.store.key("pool"), json.dumps(view, separators=(",", ":"))))

    async def read_pool(self) -> dict[str, Any] | None:
        raw = await self._call(self.redis.get(self.store.key("pool")))
        return json.loads(raw) if raw else None

    # --- placement across processes -------------------------------------------------------------

    async def claim(self, candidates: list[tuple[Server, float]], meeting_id: str, cost: float) -> Server:
        """Of ``candidates`` ((server, polled load per weight), in the local order), the one with the least
        load counting every process's unseen creates; this create is counted there in the same step."""
        now = time.time()
        index = await self._call(self._place(
            keys=[self.store.key("placed", server.name) for server, _ in candidates],
            args=[now, now - PLACED_WINDOW_S, cost, f"{meeting_id} {self.node_id} {secrets.token_hex(4)}",
                  *(v for server, base in candidates for v in (base, server.config.weight))]))
        return candidates[int(index) - 1][0]

    async def unplace(self, server: str, meeting_ids: list[str]) -> None:
        """A poll has seen these meetings (their load is real now): they leave the placed set."""
        if not meeting_ids:
            return
        key = self.store.key("placed", server)
        members = await self._call(self.redis.zrange(key, 0, -1))
        seen = set(meeting_ids)
        gone = [m for m in members if m.split(" ", 1)[0] in seen]
        if gone:
            await self._call(self.redis.zrem(key, *gone))

    async def placed_counts(self, servers: list[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        since = time.time() - PLACED_WINDOW_S
        for name in servers:
            pipe.zcount(self.store.key("placed", name), since, "+inf")
        counts = await self._call(pipe.execute())
        return dict(zip(servers, (int(c) for c in counts), strict=True))

    # --- the create lock of a meeting -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def create_lock(self, key: str, wait_s: float) -> AsyncIterator[None]:
        """Held while one process creates this meeting: a create of it on another process waits for it."""
        name, token = self.store.key("create", key), secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while not await self._call(self.redis.set(name, token, nx=True, px=int(CREATE_LOCK_S * 1000))):
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"the create of {key!r} on another bbb-lb process did not finish in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self._call(self._release(keys=[name], args=[token]))

    # --- work one process owns at a time (callback deliveries) ---------------------------------------

    async def own(self, kind: str, key: str, ttl_s: float) -> bool:
        """Take ``kind``/``key`` for this process unless a live one holds it (``keep_owning`` keeps it)."""
        return bool(await self._call(self._renew(keys=[self.store.key(kind, key)],
                                                 args=[self.node_id, int(ttl_s * 1000)])))

    async def keep_owning(self, kind: str, keys: list[str], ttl_s: float) -> None:
        """Keep what this process owns: a process that dies loses it after ``ttl_s``."""
        if not keys:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.evalsha(self._renew.sha, 1, self.store.key(kind, key), self.node_id, int(ttl_s * 1000))
        try:
            await self._call(pipe.execute())
        except StoreUnavailable:
            raise
        except Exception:  # the script not loaded yet (NOSCRIPT): one by one, which loads it
            for key in keys:
                await self.own(kind, key, ttl_s)

    async def disown(self, kind: str, key: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._call(self._release(keys=[self.store.key(kind, key)], args=[self.node_id]))

    # --- voice bridges in use --------------------------------------------------------------------

    async def claim_voice_bridge(self, server: str, bridge: str) -> bool:
        """True when no process has this bridge in use on ``server``; it is then this create's (claimed now)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.store.key("voice", server), {bridge: time.time()}, nx=True)
        pipe.sadd(self.store.key("voice-servers"), server)
        added, _ = await self._call(pipe.execute())
        return bool(added)

    async def release_voice_bridge(self, server: str, bridge: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._call(self.redis.zrem(self.store.key("voice", server), bridge))

    async def voice_bridges(self, server: str) -> set[str]:
        return set(await self._call(self.redis.zrange(self.store.key("voice", server), 0, -1)))

    async def note_voice_bridges(self, server: str, in_use: set[str]) -> int:
        """After a poll of ``server``: its set becomes ``in_use`` (what the poll saw, meetings not created
        through the LB too, and what the LB's own live meetings there hold) plus the claims of the last
        ``VOICE_CLAIM_GRACE_S`` (a create still under way is in no listing yet). One script: a claim made
        meanwhile is never lost. Answers how many bridges were freed."""
        return int(await self._call(self._prune_bridges(
            keys=[self.store.key("voice", server), self.store.key("voice-servers"), self.store.key("bridges", server)],
            args=[server, time.time() - VOICE_CLAIM_GRACE_S, *sorted(in_use)])))

    async def forget_voice_bridges(self, known: set[str]) -> None:
        """Servers no longer in the pool: their sets go (a claim of the last moments excepted, until its grace
        ends: a server added on another process may not have reached this one yet)."""
        names = set(await self._call(self.redis.smembers(self.store.key("voice-servers"))))
        for server in sorted(names - known):
            await self.note_voice_bridges(server, set())

    # --- changes: every process drops its caches at once ---------------------------------------------

    async def publish(self, kind: str, subject: str = "") -> None:
        """Tell every process (this one too) that ``kind`` changed (meeting key, server name...)."""
        with contextlib.suppress(StoreUnavailable):
            await self._call(self.redis.publish(self.changes_channel,
                                                json.dumps({"kind": kind, "subject": subject, "by": self.node_id})))

    def listen(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever(), name="bbb-lb-changes")

    async def _listen_forever(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.changes_channel)
                async for message in pubsub.listen():
                    await self._changed(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("change notices from Redis interrupted (%s); resubscribing", exc)
                if self.on_change is not None:  # what was missed meanwhile is read again
                    await self._safely("all", "")
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), STOP_S)

    async def _changed(self, message: dict[str, Any]) -> None:
        try:
            notice = json.loads(message["data"])
            kind, subject = str(notice["kind"]), str(notice.get("subject", ""))
        except (KeyError, TypeError, ValueError):
            return
        self.changes_seen += 1
        await self._safely(kind, subject)

    async def _safely(self, kind: str, subject: str) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(kind, subject)
        except StoreUnavailable as exc:
            log.warning("change %s %s not applied: %s", kind, subject, exc)
        except Exception:
            log.exception("change %s %s not applied", kind, subject)

    async def stop(self, budget: StopBudget | None = None) -> None:
        """The listener, then this node's entry and lease, within ``budget`` whatever Redis does (the per-call
        store timeout may be longer than a stop can wait)."""
        budget = budget or StopBudget()
        if self._listener is not None:
            await stop_task(self._listener, budget.step())
        within = budget.step()
        try:
            async with asyncio.timeout(within):
                await self.leave()
        except TimeoutError:
            log.warning("Redis did not answer within %.1f s: this node's entry expires by itself", within)
            self.leader = False
