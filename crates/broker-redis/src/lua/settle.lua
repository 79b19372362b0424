-- ARGV: queue, most dead jobs kept, number of acks n, then n ack lease members
-- (id .. token), then the same n ids, then 4 per other settlement: kind ('r' retry,
-- 'l' release: like a retry, but this delivery does not count as an attempt; 'd' dead),
-- lease member, retry-at ms, error.
-- Returns 1 per settlement applied, 0 per stale one (its lease is no longer current); acks
-- first, in order, then the others.
local queue, dead_max, na = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
if na > 0 then
  -- Acks, the hot path: all from ARGV slices, no per-job strings made here.
  local m0, i0 = 4, 4 + na
  local scores = {}
  for i = m0, m0 + na - 1, CHUNK do
    local part = redis.call('ZMSCORE', K_LEASED, unpack(ARGV, i, math.min(i + CHUNK - 1, m0 + na - 1)))
    for k = 1, #part do scores[#scores + 1] = part[k] end
  end
  local all = true
  for j = 1, na do
    if scores[j] then out[j] = 1 else out[j] = 0; all = false end
  end
  if all then
    for i = m0, m0 + na - 1, CHUNK do
      redis.call('ZREM', K_LEASED, unpack(ARGV, i, math.min(i + CHUNK - 1, m0 + na - 1)))
    end
    for i = i0, i0 + na - 1, CHUNK do
      redis.call('HDEL', K_JOBS, unpack(ARGV, i, math.min(i + CHUNK - 1, i0 + na - 1)))
    end
    if redis.call('EXISTS', K_TENANTS) == 1 then
      for i = i0, i0 + na - 1, CHUNK do
        redis.call('HDEL', K_TENANTS, unpack(ARGV, i, math.min(i + CHUNK - 1, i0 + na - 1)))
      end
    end
  else
    local held, ids = {}, {}
    for j = 1, na do
      if scores[j] then
        held[#held + 1] = ARGV[m0 + j - 1]
        ids[#ids + 1] = ARGV[i0 + j - 1]
      end
    end
    bulk('ZREM', K_LEASED, held)
    -- An acked job is forgotten at once: its history is in the store.
    bulk('HDEL', K_JOBS, ids)
    bulk('HDEL', K_TENANTS, ids)
  end
end
local base = 3 + 2 * na
local members = {}
for i = base + 1, #ARGV, 4 do members[#members + 1] = ARGV[i + 1] end
if #members == 0 then return out end
local scores = multi('ZMSCORE', K_LEASED, members)
local held, again, again_att, sched, dead, errs = {}, {}, {}, {}, {}, {}
for j = 1, #members do
  if scores[j] then
    out[na + j] = 1
    local b = base + (j - 1) * 4
    local kind, m = ARGV[b + 1], members[j]
    local id = string.sub(m, 1, 16)
    local att = tonumber(string.sub(m, 17)) % TOKEN_SPLIT
    held[#held + 1] = m
    if kind == 'l' then att = att - 1 end
    if kind == 'r' or kind == 'l' then
      local at = tonumber(ARGV[b + 3])
      if at <= now then
        again[#again + 1] = id
        again_att[#again_att + 1] = att
      else
        sched[#sched + 1] = at
        sched[#sched + 1] = waiting(id, att)
      end
    else
      dead[#dead + 1] = now
      dead[#dead + 1] = id
      errs[#errs + 1] = id
      errs[#errs + 1] = fmt(att) .. '\n' .. ARGV[b + 4]
    end
  else
    out[na + j] = 0
  end
end
bulk('ZREM', K_LEASED, held)
local was_empty = #again > 0 and not any_ready()
to_ready(again, again_att)
bulk('ZADD', K_SCHED, sched)
bulk('ZADD', K_DEAD, dead)
bulk('HSET', K_ERR, errs)
-- The dead-letter set is bounded: the oldest fall out (their history is in the store).
local over = redis.call('ZCARD', K_DEAD) - dead_max
if over > 0 then
  local gone = {}
  local popped = redis.call('ZPOPMIN', K_DEAD, over)
  for i = 1, #popped, 2 do gone[#gone + 1] = popped[i] end
  bulk('HDEL', K_JOBS, gone)
  bulk('HDEL', K_ERR, gone)
  bulk('HDEL', K_TENANTS, gone)
end
wake_if(was_empty, queue)
return out
