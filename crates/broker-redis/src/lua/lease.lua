-- ARGV: lease ms, max jobs.
-- Returns {lease_until, next_due, lease_no, held, value1, attempt1, value2, attempt2, ...};
-- `held` says which queue limit held this lease below what was asked while jobs were
-- ready (0 none, 1 rate, 2 concurrency, 3 both); each
-- job's token is lease_no * 65536 + min(attempt, 65535). next_due is the earliest time a
-- scheduled job or a lease expiry may make more work due (0: none known).
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
local out = {until_, 0, 0, 0}
local held = 0
-- Pool-wide queue limits, exact because every worker leases through this script: at most
-- `concurrency` leased at once, and starts metered by a GCRA. `limited_until` says when a
-- limit could next let a job through, so idle consumers sleep until then.
local limited_until = 0
local rate = nil
if max > 0 then
  local lim = redis.call('HMGET', K_LIMITS, 'rate_count', 'rate_period_ms', 'rate_burst', 'concurrency')
  if lim[4] then
    local room = math.max(tonumber(lim[4]) - redis.call('ZCARD', K_LEASED), 0)
    if room < max then
      max = room
      held = 2
      -- A slot frees when a holder settles, which no timer announces: look again soon.
      limited_until = now + 20
    end
  end
  if lim[1] and max > 0 then
    local allowed, tat, interval, tolerance =
      gcra(K_TAT, tonumber(lim[1]), tonumber(lim[2]), tonumber(lim[3]), now, max)
    rate = {tat = tat, interval = interval, tolerance = tolerance}
    if allowed < max then
      max = allowed
      held = held + 1
    end
  end
end
local leased_n = 0
if redis.call('EXISTS', K_PAUSED) == 0 and max > 0 then
  local members = take_ready(max)
  if #members > 0 then
    -- One lease number per call: every job leased here gets token
    -- lease_no * 65536 + attempts, which still grows with every lease of any one job.
    local lease_no = redis.call('INCR', K_FENCE)
    out[3] = lease_no
    local vals = multi('HMGET', K_JOBS, members_ids(members))
    local suffix = {}
    local z = {}
    for i = 1, #members do
      if vals[i] then
        local m = members[i]
        local id, att = m, 1
        if #m > 16 then
          id = string.sub(m, 1, 16)
          att = tonumber(string.sub(m, 17)) + 1
        end
        local sfx = suffix[att]
        if not sfx then
          sfx = fmt(lease_no * TOKEN_SPLIT + math.min(att, TOKEN_SPLIT - 1))
          suffix[att] = sfx
        end
        z[#z + 1] = until_
        z[#z + 1] = id .. sfx
        out[#out + 1] = vals[i]
        out[#out + 1] = att
      end
    end
    bulk('ZADD', K_LEASED, z)
    leased_n = #z / 2
  end
end
if rate then
  gcra_take(K_TAT, rate.tat, rate.interval, leased_n, now)
  local next_token = rate.tat + leased_n * rate.interval - rate.tolerance
  if next_token > now and any_ready() then
    limited_until = math.max(limited_until, math.ceil(next_token))
  end
end
local next_due = 0
for _, k in ipairs({K_SCHED, K_LEASED}) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  local at = tonumber(first[2])
  if at and (next_due == 0 or at < next_due) then next_due = at end
end
if held > 0 and any_ready() then out[4] = held end
if limited_until > 0 and any_ready() and
    (next_due == 0 or limited_until < next_due) then
  next_due = limited_until
end
out[2] = next_due
return out
