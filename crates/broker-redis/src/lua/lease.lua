-- ARGV: lease ms, max jobs.
-- Returns {lease_until, next_due, env1, attempt1, token1, env2, ...}; next_due is the earliest
-- time a scheduled job or a lease expiry may make more work due (0 when none is known).
local lease_ms, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
-- Jobs whose holder stopped heartbeating are due again; the next lease gets a newer token.
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, 1000)
if #expired > 0 then
  bulk('ZREM', K_LEASED, expired)
  bulk('HDEL', K_TOK, expired)
  to_ready(expired)
end
local due = redis.call('ZRANGEBYSCORE', K_SCHED, '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  bulk('ZREM', K_SCHED, due)
  to_ready(due)
end
local until_ = now + lease_ms
local out = {until_, 0}
if redis.call('EXISTS', K_PAUSED) == 0 and max > 0 then
  local popped = redis.call('ZPOPMIN', K_READY, max)
  local ids = {}
  for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
  if #ids > 0 then
    local base = redis.call('INCRBY', K_FENCE, #ids) - #ids
    local envs, atts = hmget(K_JOBS, ids), hmget(K_ATT, ids)
    local z, t, a = {}, {}, {}
    for i = 1, #ids do
      local id = ids[i]
      if envs[i] then
        local att, tok = (tonumber(atts[i]) or 0) + 1, base + i
        z[#z + 1] = until_; z[#z + 1] = id
        t[#t + 1] = id; t[#t + 1] = tok
        a[#a + 1] = id; a[#a + 1] = att
        out[#out + 1] = envs[i]; out[#out + 1] = att; out[#out + 1] = tok
      end
    end
    bulk('ZADD', K_LEASED, z)
    bulk('HSET', K_TOK, t)
    bulk('HSET', K_ATT, a)
  end
end
local next_due = 0
for _, k in ipairs({K_SCHED, K_LEASED}) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  local at = tonumber(first[2])
  if at and (next_due == 0 or at < next_due) then next_due = at end
end
out[2] = next_due
return out
