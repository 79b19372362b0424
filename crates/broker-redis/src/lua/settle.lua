-- ARGV: queue, most dead jobs kept, then 5 per settlement: kind ('a' ack, 'r' retry,
-- 'd' dead), id, token, retry-at ms, error. Returns 1 per settlement applied, 0 per stale one.
local queue, dead_max = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local ids, toks = {}, {}
for i = 3, #ARGV, 5 do
  ids[#ids + 1] = ARGV[i + 1]
  toks[#toks + 1] = ARGV[i + 2]
end
local cur = hmget(K_TOK, ids)
local out, held, acked, again, sched, dead, errs = {}, {}, {}, {}, {}, {}, {}
for j = 1, #ids do
  if cur[j] == toks[j] then
    out[j] = 1
    local b = 2 + (j - 1) * 5
    local kind, id = ARGV[b + 1], ids[j]
    held[#held + 1] = id
    if kind == 'a' then
      acked[#acked + 1] = id
    elseif kind == 'r' then
      local at = tonumber(ARGV[b + 4])
      if at <= now then
        again[#again + 1] = id
      else
        sched[#sched + 1] = at; sched[#sched + 1] = id
      end
    else
      dead[#dead + 1] = now; dead[#dead + 1] = id
      errs[#errs + 1] = id; errs[#errs + 1] = ARGV[b + 5]
    end
  else
    out[j] = 0
  end
end
bulk('ZREM', K_LEASED, held)
bulk('HDEL', K_TOK, held)
forget(acked)
local was_empty = #again > 0 and redis.call('ZCARD', K_READY) == 0
to_ready(again)
bulk('ZADD', K_SCHED, sched)
bulk('ZADD', K_DEAD, dead)
bulk('HSET', K_ERR, errs)
-- The dead-letter set is bounded: the oldest fall out (their history is in the store).
local over = redis.call('ZCARD', K_DEAD) - dead_max
if over > 0 then
  local gone = {}
  local popped = redis.call('ZPOPMIN', K_DEAD, over)
  for i = 1, #popped, 2 do gone[#gone + 1] = popped[i] end
  forget(gone)
  bulk('HDEL', K_ERR, gone)
end
wake_if(was_empty, queue)
return out
