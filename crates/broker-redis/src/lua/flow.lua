-- Per-key limits for one job. After the queue's keys: its concurrency key's holders (zset:
-- id -> holder expiry ms), then its rate key's GCRA arrival time (either may be unused).
-- ARGV: op ('enter', 'leave'), job id, hold ms, has concurrency key ('1'/'0'), has rate key.
-- enter returns {1, 0} to go (the concurrency key now held) or {0, wait ms}; leave {1, 0}.
local K_HOLD, K_RTAT = KEYS[#KEYS - 1], KEYS[#KEYS]
local op, id, hold_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local has_c, has_r = ARGV[4] == '1', ARGV[5] == '1'
if op == 'leave' then
  if has_c then redis.call('ZREM', K_HOLD, id) end
  return {1, 0}
end
local now = now_ms()
local lim = redis.call('HMGET', K_LIMITS, 'key_rate_count', 'key_rate_period_ms', 'key_rate_burst', 'key_concurrency')
local took = false
if has_c and lim[4] then
  -- Holders whose worker died (no renewal) fall out when their lease would have expired.
  redis.call('ZREMRANGEBYSCORE', K_HOLD, '-inf', now)
  if not redis.call('ZSCORE', K_HOLD, id) then
    if redis.call('ZCARD', K_HOLD) >= tonumber(lim[4]) then
      -- A slot frees when a holder finishes, which no timer announces: look again soon.
      return {0, 100}
    end
    redis.call('ZADD', K_HOLD, now + hold_ms, id)
    took = true
  end
  redis.call('PEXPIRE', K_HOLD, hold_ms + 60000)
end
if has_r and lim[1] then
  local allowed, tat, interval, tolerance =
    gcra(K_RTAT, tonumber(lim[1]), tonumber(lim[2]), tonumber(lim[3]), now, 1)
  if allowed < 1 then
    if took then redis.call('ZREM', K_HOLD, id) end
    return {0, math.max(math.ceil(tat - tolerance - now), 1)}
  end
  gcra_take(K_RTAT, tat, interval, 1, now)
end
return {1, 0}
