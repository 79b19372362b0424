-- Shared by every Ferry script. KEYS[1..8] are one queue's keys, all with the same hash tag
-- so that they live in one Redis Cluster slot:
--   1 ready  (zset: score -priority; member id .. attempts, or just id for 0 attempts)
--   2 sched  (zset: score run_at ms; member as in ready)
--   3 leased (zset: score lease expiry ms; member id .. token)
--   4 dead   (zset: score dead-at ms; member id)
--   5 jobs   (hash: id -> priority .. "\n" .. envelope JSON)
--   6 err    (hash: id -> attempts .. "\n" .. last error, only while dead)
--   7 fence  (string: the queue's lease counter)
--   8 paused (string: present while the queue is paused)
--   9 limits (hash: rate_count, rate_period_ms, rate_burst, concurrency, key_rate_count,
--             key_rate_period_ms, key_rate_burst, key_concurrency; absent fields: no limit)
--  10 tat    (string: the queue rate limit's theoretical arrival time, ms, GCRA)
--  11 lanes  (zset: tenant -> turn; the tenants with jobs ready, in round-robin order)
--  12 tenant (hash: id -> tenant, for jobs that have one)
-- Fairness: a ready job with a tenant waits in its tenant's lane (`<prefix>lane:<tenant>`,
-- a zset like `ready`) instead of `ready`; a lease takes from `ready` (jobs without a
-- tenant, as one more lane) and from each lane in turn, an equal share each, so one
-- tenant's backlog cannot starve another's jobs. Lane keys share the queue's hash tag.
-- An id is the 16 raw bytes of the job's UUIDv7, so ties in `ready` break oldest first.
-- Attempts and tokens are decimal text after the id. A token is lease_no * 65536 + attempts
-- (attempts saturate at 65535), where lease_no counts lease calls on the queue: it grows
-- with every lease of a job, and it carries the attempt count while the job is leased, so
-- that per job the hot path touches only the job hash and the three sets (no per-job token
-- or attempt fields to write and delete).
local K_READY, K_SCHED, K_LEASED, K_DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_JOBS, K_ERR, K_FENCE, K_PAUSED = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_LIMITS, K_TAT = KEYS[9], KEYS[10]
local K_LANES, K_TENANTS = KEYS[11], KEYS[12]
-- 'ferry:{q}:lanes' -> 'ferry:{q}:lane:'
local LANE_PREFIX = string.sub(K_LANES, 1, -2) .. ':'


-- Lua's unpack has a stack limit (about 8,000 values): every variadic call goes in chunks.
local CHUNK = 4000
local TOKEN_SPLIT = 65536

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as exact decimal text (tostring would switch to exponent form past 1e14).
local function fmt(n)
  return string.format('%.0f', n)
end

-- cmd key [opt] args... in chunks; `args` is flat and pairs never straddle a chunk.
local function bulk(cmd, key, args, opt)
  local n = #args
  for i = 1, n, CHUNK do
    local j = math.min(i + CHUNK - 1, n)
    if opt then
      redis.call(cmd, key, opt, unpack(args, i, j))
    else
      redis.call(cmd, key, unpack(args, i, j))
    end
  end
end

-- A variadic read (HMGET, ZMSCORE) in chunks, results concatenated.
local function multi(cmd, key, args)
  local out = {}
  local n = #args
  for i = 1, n, CHUNK do
    local part = redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, n)))
    for k = 1, #part do out[#out + 1] = part[k] end
  end
  return out
end

-- Splits "<16-byte id><decimal>" members.
local function split(members)
  local ids, nums = {}, {}
  for i = 1, #members do
    ids[i] = string.sub(members[i], 1, 16)
    nums[i] = tonumber(string.sub(members[i], 17)) or 0
  end
  return ids, nums
end

-- A ready or scheduled member: the bare id for a job never delivered.
local function waiting(id, att)
  if att == 0 then return id end
  return id .. fmt(att)
end

-- The ids of ready members: the member itself for a job never delivered (no string made).
local function members_ids(members)
  local ids = {}
  for i = 1, #members do
    local m = members[i]
    if #m > 16 then ids[i] = string.sub(m, 1, 16) else ids[i] = m end
  end
  return ids
end

-- "<decimal>\n<rest>" -> number, rest
local function head(v)
  local p = string.find(v, '\n', 1, true)
  return tonumber(string.sub(v, 1, p - 1)), string.sub(v, p + 1)
end

local function lane_key(tenant)
  return LANE_PREFIX .. tenant
end

-- Ready jobs: the untenanted set plus every lane.
local function ready_count()
  local n = redis.call('ZCARD', K_READY)
  local lanes = redis.call('ZRANGE', K_LANES, 0, -1)
  for i = 1, #lanes do n = n + redis.call('ZCARD', lane_key(lanes[i])) end
  return n
end

local function any_ready()
  return redis.call('ZCARD', K_READY) > 0 or redis.call('ZCARD', K_LANES) > 0
end

-- Adds `args` (score, member pairs) to `tenant`'s lane; a lane that was idle joins the
-- rotation at the back.
local function to_lane(tenant, args)
  bulk('ZADD', lane_key(tenant), args)
  if not redis.call('ZSCORE', K_LANES, tenant) then
    local last = redis.call('ZRANGE', K_LANES, -1, -1, 'WITHSCORES')
    redis.call('ZADD', K_LANES, (tonumber(last[2]) or 0) + 1, tenant)
  end
end

-- Makes `ids` ready again with `atts` attempts so far, at their own priority, each in its
-- tenant's lane or, without a tenant, in `ready`.
local function to_ready(ids, atts)
  if #ids == 0 then return end
  local vals = multi('HMGET', K_JOBS, ids)
  local tenants = {}
  if redis.call('EXISTS', K_TENANTS) == 1 then tenants = multi('HMGET', K_TENANTS, ids) end
  local args, lanes = {}, {}
  for i = 1, #ids do
    if vals[i] then
      local prio = head(vals[i])
      local into = args
      local t = tenants[i]
      if t then
        lanes[t] = lanes[t] or {}
        into = lanes[t]
      end
      into[#into + 1] = -prio
      into[#into + 1] = waiting(ids[i], atts[i])
    end
  end
  bulk('ZADD', K_READY, args)
  for t, a in pairs(lanes) do to_lane(t, a) end
end

-- Takes up to `max` ready members: all from `ready` when no tenant has jobs waiting (the
-- common case, one call), else an equal share from each lane in turn, `ready` being the
-- lane of jobs without a tenant (up to 64 lanes per call), again until `max` or nothing is
-- left. Served lanes go to the back of the rotation, so that small leases take turns too;
-- emptied ones leave it.
local function take_ready(max)
  if redis.call('EXISTS', K_LANES) == 0 then
    -- ZRANGE + ZREMRANGEBYRANK rather than ZPOPMIN: no score strings to make per job.
    local members = redis.call('ZRANGE', K_READY, 0, max - 1)
    if #members > 0 then redis.call('ZREMRANGEBYRANK', K_READY, 0, #members - 1) end
    return members
  end
  -- Jobs without a tenant take their turn too, as tenant '' (their set is `ready`).
  if redis.call('ZCARD', K_READY) > 0 and not redis.call('ZSCORE', K_LANES, '') then
    local last = redis.call('ZRANGE', K_LANES, -1, -1, 'WITHSCORES')
    redis.call('ZADD', K_LANES, (tonumber(last[2]) or 0) + 1, '')
  end
  local tenants = redis.call('ZRANGE', K_LANES, 0, 63)
  local sources = {}
  for i = 1, #tenants do
    if tenants[i] == '' then sources[i] = K_READY else sources[i] = lane_key(tenants[i]) end
  end
  local open, served = {}, {}
  for i = 1, #sources do open[i] = true end
  local members, left, active = {}, max, #sources
  while left > 0 and active > 0 do
    local share = math.ceil(left / active)
    for i = 1, #sources do
      if open[i] and left > 0 then
        local got = redis.call('ZRANGE', sources[i], 0, math.min(share, left) - 1)
        if #got > 0 then
          redis.call('ZREMRANGEBYRANK', sources[i], 0, #got - 1)
          for k = 1, #got do members[#members + 1] = got[k] end
          left = left - #got
          served[i] = true
        end
        if #got < share then
          open[i] = false
          active = active - 1
        end
      end
    end
  end
  local last = redis.call('ZRANGE', K_LANES, -1, -1, 'WITHSCORES')
  local turn = tonumber(last[2]) or 0
  for i = 1, #tenants do
    if redis.call('EXISTS', sources[i]) == 0 then
      redis.call('ZREM', K_LANES, tenants[i])
    elseif served[i] then
      turn = turn + 1
      redis.call('ZADD', K_LANES, turn, tenants[i])
    end
  end
  return members
end

-- Tells idle consumers (in any process) that `queue` has work, but only on the edge from
-- empty: a consumer only waits after finding nothing ready, so later pushes need no message.
local function wake_if(was_empty, queue)
  if was_empty then redis.call('PUBLISH', 'ferry:wake', queue) end
end

-- Fractional milliseconds as text (GCRA times advance by period / count).
local function fmt3(n)
  return string.format('%.3f', n)
end

-- GCRA: of `want` starts, how many a rate of `count` per `period_ms` with `burst` allows at
-- `now` given the stored arrival time in `key`. Returns (allowed, tat, interval, tolerance);
-- the caller stores tat + used * interval for the starts it makes.
local function gcra(key, count, period_ms, burst, now, want)
  local interval = period_ms / count
  local tolerance = interval * (burst - 1)
  local tat = math.max(tonumber(redis.call('GET', key) or '0') or 0, now)
  local allowed = 0
  if now + tolerance >= tat then
    allowed = math.floor((now + tolerance - tat) / interval) + 1
  end
  return math.min(allowed, want), tat, interval, tolerance
end

local function gcra_take(key, tat, interval, used, now)
  if used > 0 then
    local t = tat + used * interval
    redis.call('SET', key, fmt3(t), 'PX', math.ceil(t - now) + 60000)
  end
end
