-- ARGV: queue, most dead jobs kept, then 4 per settlement: kind ('a' ack, 'r' retry,
-- 'd' dead), lease member (id .. token), retry-at ms, error.
-- Returns 1 per settlement applied, 0 per stale one (its lease is no longer current).
local queue, dead_max = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local members = {}
for i = 3, #ARGV, 4 do members[#members + 1] = ARGV[i + 1] end
local scores = multi('ZMSCORE', K_LEASED, members)
local out, held, acked, again, again_att, sched, dead, errs = {}, {}, {}, {}, {}, {}, {}, {}
for j = 1, #members do
  if scores[j] then
    out[j] = 1
    local b = 2 + (j - 1) * 4
    local kind, m = ARGV[b + 1], members[j]
    local id = string.sub(m, 1, 16)
    held[#held + 1] = m
    if kind == 'a' then
      acked[#acked + 1] = id
    else
      local att = tonumber(string.sub(m, 17)) % TOKEN_SPLIT
      if kind == 'r' then
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
    end
  else
    out[j] = 0
  end
end
bulk('ZREM', K_LEASED, held)
-- An acked job is forgotten at once: its history is in the store.
bulk('HDEL', K_JOBS, acked)
local was_empty = #again > 0 and redis.call('ZCARD', K_READY) == 0
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
end
wake_if(was_empty, queue)
return out
