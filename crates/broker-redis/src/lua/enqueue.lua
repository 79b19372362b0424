-- ARGV: queue, idempotency ttl ms, count of plain jobs, then
--   per plain job (priority 0, due now, no idempotency key; the common case) 2 values:
--   id, stored value (priority "\n" JSON);
--   per other job 6 values: id, stored value, priority, run_at ms, index into KEYS of its
--   idempotency key (0 for none), tenant ('' for none).
-- Returns one value per other job: 1 when enqueued, or the original id when a duplicate
-- (plain jobs cannot be duplicates).
local queue, ttl, np = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local was_empty = not any_ready()
local out, jobs, ready, sched, lanes, tenants = {}, {}, {}, {}, {}, {}
local plain_end = 3 + 2 * np
if np > 0 then
  -- Plain jobs go in straight from ARGV: no per-job strings are made here.
  for i = 4, plain_end, CHUNK do
    redis.call('HSET', K_JOBS, unpack(ARGV, i, math.min(i + CHUNK - 1, plain_end)))
  end
  for i = 4, plain_end, 2 do
    ready[#ready + 1] = 0
    ready[#ready + 1] = ARGV[i]
  end
end
local first = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
local earliest = tonumber(first[2])
local wake_sched = false
for b = plain_end, #ARGV - 1, 6 do
  local id, prio, run_at, ki = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local tenant = ARGV[b + 6]
  local original = false
  if ki > 0 then
    original = redis.call('GET', KEYS[ki])
    if not original then redis.call('SET', KEYS[ki], id, 'PX', ttl) end
  end
  if original then
    out[#out + 1] = original
  else
    out[#out + 1] = 1
    jobs[#jobs + 1] = id
    jobs[#jobs + 1] = ARGV[b + 2]
    if tenant ~= '' then
      tenants[#tenants + 1] = id
      tenants[#tenants + 1] = tenant
    end
    if run_at > now then
      sched[#sched + 1] = run_at
      sched[#sched + 1] = id
      if earliest == nil or run_at < earliest then wake_sched = true end
    elseif tenant ~= '' then
      lanes[tenant] = lanes[tenant] or {}
      local l = lanes[tenant]
      l[#l + 1] = -prio
      l[#l + 1] = id
    else
      ready[#ready + 1] = -prio
      ready[#ready + 1] = id
    end
  end
end
bulk('HSET', K_JOBS, jobs)
bulk('HSET', K_TENANTS, tenants)
bulk('ZADD', K_READY, ready)
local laned = false
for t, a in pairs(lanes) do
  to_lane(t, a)
  laned = true
end
bulk('ZADD', K_SCHED, sched)
-- A new earliest scheduled job wakes consumers so that they learn when to look next.
wake_if((was_empty and (#ready > 0 or laned)) or wake_sched, queue)
return out
