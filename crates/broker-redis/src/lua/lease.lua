-- ARGV: lease ms, max jobs.
-- Returns {lease_until, next_due, value1, attempt1, token1, value2, ...}; next_due is the
-- earliest time a scheduled job or a lease expiry may make more work due (0: none known).
local lease_ms, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
-- Jobs whose holder stopped heartbeating are due again; the next lease gets a newer token.
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, 1000)
if #expired > 0 then
  bulk('ZREM', K_LEASED, expired)
  local ids, toks = split(expired)
  for i = 1, #toks do toks[i] = toks[i] % TOKEN_SPLIT end
  to_ready(ids, toks)
end
local due = redis.call('ZRANGEBYSCORE', K_SCHED, '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  bulk('ZREM', K_SCHED, due)
  to_ready(split(due))
end
local until_ = now + lease_ms
local out = {until_, 0}
if redis.call('EXISTS', K_PAUSED) == 0 and max > 0 then
  -- ZRANGE + ZREMRANGEBYRANK rather than ZPOPMIN: no score strings to make per job.
  local members = redis.call('ZRANGE', K_READY, 0, max - 1)
  if #members > 0 then redis.call('ZREMRANGEBYRANK', K_READY, 0, #members - 1) end
  if #members > 0 then
    local ids, atts = split(members)
    local base = redis.call('INCRBY', K_FENCE, #ids) - #ids
    local vals = multi('HMGET', K_JOBS, ids)
    local z = {}
    for i = 1, #ids do
      if vals[i] then
        local att = atts[i] + 1
        local tok = (base + i) * TOKEN_SPLIT + math.min(att, TOKEN_SPLIT - 1)
        z[#z + 1] = until_
        z[#z + 1] = ids[i] .. fmt(tok)
        out[#out + 1] = vals[i]
        out[#out + 1] = att
        out[#out + 1] = tok
      end
    end
    bulk('ZADD', K_LEASED, z)
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
