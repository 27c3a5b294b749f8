"""The Redis backend's Lua scripts: each runs atomically and touches one key.

Times are integer microseconds: Redis' own clock (``TIME``, one clock for every replica) unless
the caller passes ``now`` (tests inject a clock). Numbers go back to Redis through ``%.0f``,
because Lua's default conversion keeps 14 digits and a time in microseconds has 16. Every
key gets an expiry no later than the moment its state stops mattering. Writing after ``TIME``
needs effects replication: the default from Redis 5, the only mode from Redis 7.
"""

from __future__ import annotations

_PRELUDE = """
local function now_us(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(n) return string.format('%.0f', n) end
local function expire_after_last_lease(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, int(math.ceil((tonumber(last[2]) - now) / 1000) + 1))
  end
end
"""

GCRA = (
    _PRELUDE
    + """
-- KEYS[1]: the key's TAT. ARGV: limit, period (us), cost, dry run (1/0), now (us, or '' for
-- TIME). Returns {allowed, remaining, reset_after_us, retry_after_us}; see _gcra.py.
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, dry_run = tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_us(ARGV[5])
local interval = math.max(1, math.floor(period / limit))
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + math.min(cost, limit) * interval - period
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
local new_tat = tat
if not dry_run then
  new_tat = tat + cost * interval
  redis.call('SET', KEYS[1], int(new_tat), 'PX', int(math.ceil((new_tat - now) / 1000)))
end
return {1, math.max(0, math.floor((period - (new_tat - now)) / interval)), new_tat - now, 0}
"""
)

ACQUIRE = (
    _PRELUDE
    + """
-- KEYS[1]: sorted set of lease id -> expiry (us). ARGV: cap, lease id, ttl (us), now.
-- Returns {acquired, live leases after the call}.
local cap, ttl = tonumber(ARGV[1]), tonumber(ARGV[3])
local now = now_us(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local held = redis.call('ZCARD', KEYS[1])
if held >= cap then return {0, held} end
redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[2])
expire_after_last_lease(KEYS[1], now)
return {1, held + 1}
"""
)

RENEW = (
    _PRELUDE
    + """
-- KEYS[1]: sorted set of leases. ARGV: lease id, ttl (us), now. Returns 1 if renewed.
local ttl = tonumber(ARGV[2])
local now = now_us(ARGV[3])
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires or tonumber(expires) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', int(now + ttl), ARGV[1])
expire_after_last_lease(KEYS[1], now)
return 1
"""
)

IN_FLIGHT = (
    _PRELUDE
    + """
-- KEYS[1]: sorted set of leases. ARGV: now. Returns the live leases.
return redis.call('ZCOUNT', KEYS[1], '(' .. int(now_us(ARGV[1])), '+inf')
"""
)
