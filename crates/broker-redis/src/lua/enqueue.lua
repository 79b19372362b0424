-- ARGV: queue, idempotency ttl ms, then 5 per job: id, envelope, priority, run_at ms,
-- index into KEYS of its idempotency key (0 for none).
-- Returns one value per job: 1 when enqueued, or the original id when a duplicate.
local queue, ttl = ARGV[1], ARGV[2]
local now = now_ms()
local was_empty = redis.call('ZCARD', K_READY) == 0
local first = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
local earliest = tonumber(first[2])
local out, jobs, pri, ready, sched = {}, {}, {}, {}, {}
local wake_sched = false
local n = (#ARGV - 2) / 5
for j = 1, n do
  local b = 2 + (j - 1) * 5
  local id, prio, run_at, ki = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local original = false
  if ki > 0 then
    original = redis.call('GET', KEYS[ki])
    if not original then redis.call('SET', KEYS[ki], id, 'PX', ttl) end
  end
  if original then
    out[j] = original
  else
    out[j] = 1
    jobs[#jobs + 1] = id
    jobs[#jobs + 1] = ARGV[b + 2]
    if prio ~= 0 then
      pri[#pri + 1] = id
      pri[#pri + 1] = prio
    end
    if run_at > now then
      sched[#sched + 1] = run_at
      sched[#sched + 1] = id
      if earliest == nil or run_at < earliest then wake_sched = true end
    else
      ready[#ready + 1] = -prio
      ready[#ready + 1] = id
    end
  end
end
bulk('HSET', K_JOBS, jobs)
bulk('HSET', K_PRI, pri)
bulk('ZADD', K_READY, ready)
bulk('ZADD', K_SCHED, sched)
-- A new earliest scheduled job wakes consumers so that they learn when to look next.
wake_if((was_empty and #ready > 0) or wake_sched, queue)
return out
