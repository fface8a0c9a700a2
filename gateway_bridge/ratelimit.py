"""Per-tenant and per-user token buckets in Redis, taken in one atomic script call.

Every request takes one token from its tenant's bucket and one from its user's bucket,
or from neither when either is empty, in a single Lua script: Redis runs scripts one at
a time, so any number of bridge processes sharing Redis admit exactly the quota. The
clock is Redis's own (``TIME``), so the bridges' clocks never disagree about refills.

The requests of one tenant that arrive in the same event-loop turn share one script
call, which decides them one by one in arrival order (exactly as separate calls would)
and reads and writes each bucket once: under load that divides Redis's work per request
by the batch size (a script call costs Redis ~15 µs, most of it per call, not per
request).

When Redis is down the limiter **fails open onto an in-process bucket** with the same
quotas: Redis is a cache (docs/architecture.md, "State"), so a cache outage must not
become an API outage, and each bridge process still bounds what one tenant or user can
send through it (N bridge processes admit up to N× the quota while Redis is away). Redis
is retried after :data:`REDIS_RETRY_S`; each switch is logged and counted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import hiredis
import structlog

from gateway_bridge.redis_script import RedisScript
from gateway_bridge.settings import BridgeSettings, parse_quota

_log = structlog.get_logger(__name__)

#: Seconds to stay on the local buckets after a Redis failure before trying Redis again.
REDIS_RETRY_S = 5.0
#: Local buckets kept at most (least recently used are forgotten: they refill anyway).
LOCAL_MAX_BUCKETS = 100_000
KEY_PREFIX = "rl"

#: The token-bucket script (run with :class:`~gateway_bridge.redis_script.RedisScript`),
#: for a batch of requests of one tenant (see RateLimiter: one call per event-loop turn).
# KEYS: the distinct buckets of the batch. ARGV: capacity and refill-per-second of each
# bucket, in KEYS order; then per request, in arrival order, the KEYS indexes of its tenant
# and user buckets. Each request takes one token from both, or from neither when either
# holds less than one, exactly as if it came alone; each bucket is read and written once.
# Returns per request {allowed, then per bucket: remaining, ms until one token, ms until full}.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local cap, rate, level = {}, {}, {}
for i = 1, n do
  cap[i] = tonumber(ARGV[2 * i - 1])
  rate[i] = tonumber(ARGV[2 * i]) / 1000
  local v = redis.call('HMGET', KEYS[i], 'k', 't')
  local k = tonumber(v[1])
  local ts = tonumber(v[2])
  if k == nil or ts == nil then
    k = cap[i]
  elseif now > ts then
    k = math.min(cap[i], k + (now - ts) * rate[i])
  end
  level[i] = k
end
local out = {}
for r = 2 * n + 1, #ARGV, 2 do
  local pair = {tonumber(ARGV[r]), tonumber(ARGV[r + 1])}
  local allowed = 1
  if level[pair[1]] < 1 or level[pair[2]] < 1 then
    allowed = 0
  end
  out[#out + 1] = allowed
  for _, i in ipairs(pair) do
    if allowed == 1 then
      level[i] = level[i] - 1
    end
    local k = level[i]
    local wait_ms = 0
    if k < 1 then
      wait_ms = math.ceil((1 - k) / rate[i])
    end
    out[#out + 1] = math.floor(k)
    out[#out + 1] = wait_ms
    out[#out + 1] = math.ceil((cap[i] - k) / rate[i])
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[i], 'k', tostring(level[i]), 't', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap[i] - level[i]) / rate[i]) + 1000)
end
return out
"""
#: Values the script returns per request.
_REPLY_LEN = 7


@dataclass(frozen=True)
class Quota:
    limit: int
    """Bucket capacity: the burst allowed."""
    window: float
    """Seconds for an empty bucket to refill completely."""

    @classmethod
    def parse(cls, text: str) -> Quota:
        limit, window = parse_quota(text)
        return cls(limit, window)

    # Worked out once per quota, not per request (a frozen dataclass still has a __dict__
    # for cached_property to fill).
    @cached_property
    def per_second(self) -> float:
        return self.limit / self.window

    @cached_property
    def policy(self) -> str:
        """The draft's ``RateLimit-Policy`` item: ``<limit>;w=<window seconds>``."""
        return f"{self.limit};w={_ceil(self.window)}"

    @cached_property
    def script_args(self) -> tuple[str, str]:
        """This bucket's ARGV pair for :data:`TAKE_SCRIPT`: capacity, refill per second."""
        return str(self.limit), repr(self.per_second)

    @cached_property
    def limit_text(self) -> str:
        return str(self.limit)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    quota: Quota
    """The quota of the bucket closest to empty (the one the headers describe)."""
    remaining: int
    reset: float
    """Seconds until that bucket is full again."""
    retry_after: float
    """Seconds until a denied request could pass (0 when allowed)."""

    def headers(self) -> dict[str, str]:
        """IETF draft RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-07)."""
        h = {
            "RateLimit-Limit": self.quota.limit_text,
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(_ceil(self.reset)),
            "RateLimit-Policy": self.quota.policy,
        }
        if not self.allowed:
            h["Retry-After"] = str(max(1, _ceil(self.retry_after)))
        return h


class _Bucket(NamedTuple):
    key: str
    quota: Quota


class _Level(NamedTuple):
    remaining: int
    wait_ms: float
    full_ms: float


class LocalBuckets:
    """The same token buckets in process memory (the fallback while Redis is down)."""

    def __init__(
        self, max_buckets: int = LOCAL_MAX_BUCKETS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_buckets
        self._clock = clock
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, buckets: list[_Bucket]) -> tuple[bool, list[_Level]]:
        now = self._clock()
        levels = []
        for b in buckets:
            tokens, ts = self._state.get(b.key, (float(b.quota.limit), now))
            levels.append(min(b.quota.limit, tokens + max(0.0, now - ts) * b.quota.per_second))
        allowed = all(k >= 1 for k in levels)
        out = []
        for b, k in zip(buckets, levels, strict=True):
            if allowed:
                k -= 1
            self._state[b.key] = (k, now)
            self._state.move_to_end(b.key)
            rate_ms = b.quota.per_second / 1000
            out.append(
                _Level(
                    remaining=math.floor(k),
                    wait_ms=math.ceil((1 - k) / rate_ms) if k < 1 else 0,
                    full_ms=math.ceil((b.quota.limit - k) / rate_ms),
                )
            )
        while len(self._state) > self._max:
            self._state.popitem(last=False)
        return allowed, out


class RateLimiter:
    """Takes one token per request from the tenant's and the user's bucket."""

    def __init__(
        self,
        script: RedisScript | None,
        tenant: Quota,
        user: Quota,
        overrides: Mapping[str, tuple[Quota | None, Quota | None]] | None = None,
        *,
        on_fallback: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._script = script
        self._tenant = tenant
        self._user = user
        self._overrides = dict(overrides or {})
        self._local = LocalBuckets(clock=clock)
        self._on_fallback = on_fallback
        self._clock = clock
        self._redis_down_until = 0.0
        # Requests waiting for their tenant's next script call, and the calls under way.
        self._batches: dict[str, list[tuple[tuple[_Bucket, _Bucket], asyncio.Future[Any]]]] = {}
        self._calls: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: BridgeSettings,
        script: RedisScript | None,
        on_fallback: Callable[[], None] | None = None,
    ) -> RateLimiter:
        overrides = {
            tenant: (
                Quota.parse(q["tenant"]) if "tenant" in q else None,
                Quota.parse(q["user"]) if "user" in q else None,
            )
            for tenant, q in settings.rate_limit_overrides.items()
        }
        return cls(
            script,
            Quota.parse(settings.rate_limit_tenant),
            Quota.parse(settings.rate_limit_user),
            overrides,
            on_fallback=on_fallback,
        )

    def quotas(self, tenant: str) -> tuple[Quota, Quota]:
        t, u = self._overrides.get(tenant, (None, None))
        return t or self._tenant, u or self._user

    async def take(self, tenant: str, user: str) -> Decision:
        tenant_q, user_q = self.quotas(tenant)
        # `{tenant}` is a Redis Cluster hash tag: both keys of one script share a slot.
        buckets = (
            _Bucket(f"{KEY_PREFIX}:{{{tenant}}}:t", tenant_q),
            _Bucket(f"{KEY_PREFIX}:{{{tenant}}}:u:{user}", user_q),
        )
        allowed, (t, u) = await self._take(tenant, buckets)
        # Describe the bucket that binds: when denied, the one needing the longest wait;
        # otherwise the one with the fewest tokens left (the tenant's on a tie).
        if allowed:
            i = 1 if u.remaining < t.remaining else 0
        else:
            i = 1 if u.wait_ms > t.wait_ms else 0
        level = u if i else t
        return Decision(
            allowed=allowed,
            quota=buckets[i].quota,
            remaining=level.remaining,
            reset=level.full_ms / 1000,
            retry_after=max(t.wait_ms, u.wait_ms) / 1000,
        )

    async def _take(
        self, tenant: str, buckets: tuple[_Bucket, _Bucket]
    ) -> tuple[bool, list[_Level]]:
        if self._script is not None and self._clock() >= self._redis_down_until:
            try:
                out = await self._batched(tenant, buckets)
            except (OSError, hiredis.HiredisError) as exc:  # ConnectionError, TimeoutError
                self._redis_failed(exc)
            else:
                if self._redis_down_until:
                    self._redis_down_until = 0.0
                    _log.warning("ratelimit_redis_back")
                # {allowed, then per bucket: remaining, ms until one token, ms until full}
                return bool(out[0]), [
                    _Level(int(out[1]), int(out[2]), int(out[3])),
                    _Level(int(out[4]), int(out[5]), int(out[6])),
                ]
        if self._on_fallback is not None:
            self._on_fallback()
        return self._local.take(list(buckets))

    def _batched(self, tenant: str, buckets: tuple[_Bucket, _Bucket]) -> asyncio.Future[Any]:
        """This request's script reply, from its tenant's call of this event-loop turn."""
        loop = asyncio.get_running_loop()
        batch = self._batches.get(tenant)
        if batch is None:
            batch = self._batches[tenant] = []
            loop.call_soon(self._send, tenant)
        reply: asyncio.Future[Any] = loop.create_future()
        batch.append((buckets, reply))
        return reply

    def _send(self, tenant: str) -> None:
        # The call runs in its own task, so a caller that goes away cannot take the
        # others' replies with it; every outcome reaches the callers through their futures.
        call = asyncio.get_running_loop().create_task(self._call(self._batches.pop(tenant)))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[tuple[_Bucket, _Bucket], asyncio.Future[Any]]]) -> None:
        assert self._script is not None
        index: dict[str, str] = {}  # bucket key -> its 1-based KEYS index, as ARGV text
        quotas: list[str] = []
        pairs: list[str] = []
        for buckets, _ in batch:
            for bucket in buckets:
                i = index.get(bucket.key)
                if i is None:
                    i = index[bucket.key] = str(len(index) + 1)
                    quotas += bucket.quota.script_args
                pairs.append(i)
        try:
            out = await self._script(list(index), quotas + pairs)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else ConnectionError("call cancelled")
            for _, reply in batch:
                if not reply.done():
                    reply.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for j, (_, reply) in enumerate(batch):
            if not reply.done():  # else its caller gave up (client gone)
                reply.set_result(out[j * _REPLY_LEN : (j + 1) * _REPLY_LEN])

    def _redis_failed(self, exc: BaseException) -> None:
        if not self._redis_down_until:
            _log.warning(
                "ratelimit_redis_down_failing_open",
                error=type(exc).__name__,
                retry_in_s=REDIS_RETRY_S,
            )
        self._redis_down_until = self._clock() + REDIS_RETRY_S


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))
