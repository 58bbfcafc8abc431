"""Query-attack state shared by every replica of a gateway: the fingerprints, answers and flags of
each identity kept in one Redis or Valkey server (`guard serve --query-store redis://HOST:PORT/DB`).

Behind a load balancer, a client's requests spread over the replicas. With a store per process, an
attacker who spreads its queries over N replicas leaves each with 1/N of its near-duplicates, and
answers that flip less often on each: enough to pass under the rule. Routing every identity to one
replica would need a balancer that hashes on the identity, which for a token or a client
certificate means terminating TLS in the balancer; a shared store needs only a Redis, and the
balancer stays a plain Service. So the replicas share the state instead.

One Lua script does a query's whole step atomically, on the server, in one round trip: number the
query (INCR), count for every stored query how many of this query's hashes it shares (one sorted set
per hash, scored by time: an inverted index, so only queries sharing a hash are touched), read the
answers of those sharing at least `threshold`, then store the query. Two replicas' queries of one
identity are thus numbered and matched in one order, as one process would. The rule itself
(guard.detection.queries.decide) runs here, on what the script returns.

Bounds, as in the in-process store: a query counts for `window_seconds` and among the identity's
latest `max_entries`; every key expires `window_seconds` after the identity's last query, so an
idle identity costs nothing. The identity is stored as a digest, never in the clear; keys share a
hash tag per identity (`{...}`), so one identity's keys sit on one node. Time is the replicas'
wall clock (their monotonic clocks are not comparable), so replicas need synchronised clocks (NTP),
as anything comparing timestamps across hosts does.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from guard.detection.queries import Match, QuerySettings, decide
from guard.protocol.errors import GuardError

PREFIX = "guard:q"
TIMEOUT_SECONDS = 1.0
"""A store slower than this fails the check (socket timeout): the request is not held for it."""

# KEYS[1]: the identity's prefix. ARGV: now, window_seconds, max_entries, threshold, answer, hashes.
# Returns whether the identity is flagged (its flag key exists), then the answers of the stored
# near-duplicates in the order they came: one round trip answers both of a request's questions.
STEP = """
local prefix = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_entries = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local answer = ARGV[5]
local since = now - window
local number = redis.call('INCR', prefix .. ':n')
local oldest = number - max_entries - 1
local counts = {}
local keys = {}
for i = 6, #ARGV do
  local key = prefix .. ':h:' .. ARGV[i]
  keys[#keys + 1] = key
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. since)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, since, '+inf')) do
    local k = tonumber(member)
    if k > oldest then counts[k] = (counts[k] or 0) + 1 end
  end
end
local near = {}
for k, c in pairs(counts) do
  if c >= threshold then near[#near + 1] = k end
end
table.sort(near)
local answers = {}
if #near > 0 then answers = redis.call('HMGET', prefix .. ':a', unpack(near)) end
local ttl = math.ceil(window)
for _, key in ipairs(keys) do
  redis.call('ZADD', key, now, number)
  redis.call('ZREMRANGEBYRANK', key, 0, -(max_entries + 1))
  redis.call('EXPIRE', key, ttl)
end
redis.call('HSET', prefix .. ':a', number, answer)
-- the next query's oldest live entry is number - max_entries + 1
if number > max_entries then redis.call('HDEL', prefix .. ':a', number - max_entries) end
redis.call('EXPIRE', prefix .. ':a', ttl)
redis.call('EXPIRE', prefix .. ':n', ttl)
table.insert(answers, 1, redis.call('EXISTS', prefix .. ':flag'))
return answers
"""


class QueryStoreUnavailable(GuardError):
    """The shared query store did not answer: the request's query-attack check could not run."""

    status = "UNAVAILABLE"


def connect(url: str) -> Any:
    """An asyncio Redis client for `url` (redis://, rediss:// for TLS, unix://; credentials in the
    URL). Imported here: only a gateway that names a store needs the `redis` package."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise RuntimeError("--query-store needs the redis package: pip install 'guard[shared]'") from exc
    return redis.asyncio.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)


class SharedQueryStore:
    """One model's query-attack state in the shared store; the same questions as the in-process
    QueryStore and flags, asked over the network."""

    clock = staticmethod(time.time)

    def __init__(self, client: Any, model: str, settings: QuerySettings):
        self.client, self.model, self.settings = client, model, settings
        self._step = client.register_script(STEP)

    def _prefix(self, identity: str) -> str:
        digest = hashlib.sha256(f"{self.model}\0{identity}".encode()).hexdigest()[:32]
        return f"{PREFIX}:{{{digest}}}"

    async def _call(self, what: str, step: Any) -> Any:
        try:
            return await step
        except Exception as exc:  # noqa: BLE001 - redis raises its own family, plus OSError and timeouts
            raise QueryStoreUnavailable(
                f"the query-attack store did not answer ({what}: {type(exc).__name__}); "
                f"model '{self.model}' cannot check this client's queries"
            ) from exc

    async def observe(
        self, identity: str, prints: np.ndarray, answers: np.ndarray, now: float
    ) -> tuple[list[Match], bool]:
        """Match each row against the identity's stored queries (every replica's), then store it;
        also whether the identity is flagged (by any replica)."""
        s, prefix = self.settings, self._prefix(identity)
        matches, flagged = [], False
        for fingerprint, answer in zip(prints, answers.tolist(), strict=True):
            hashes = [str(h) for h in fingerprint.tolist() if h]
            args = [repr(now), repr(s.window_seconds), s.max_entries, s.threshold, answer, *hashes]
            flag, *found = await self._call("match", self._step(keys=[prefix], args=args))
            matches.append(decide(np.array([int(a) for a in found], dtype=np.int64), answer, s))
            flagged = bool(flag)
        return matches, flagged

    async def flag(self, identity: str, seconds: float) -> None:
        await self._call("flag", self.client.set(f"{self._prefix(identity)}:flag", 1, px=max(1, round(seconds * 1000))))

    async def flagged(self, identity: str) -> bool:
        return bool(await self._call("flag lookup", self.client.exists(f"{self._prefix(identity)}:flag")))
