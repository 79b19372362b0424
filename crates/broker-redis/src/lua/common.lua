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
-- An id is the 16 raw bytes of the job's UUIDv7, so ties in `ready` break oldest first.
-- Attempts and tokens are decimal text after the id. A token is lease_no * 65536 + attempts
-- (attempts saturate at 65535), where lease_no counts lease calls on the queue: it grows
-- with every lease of a job, and it carries the attempt count while the job is leased, so
-- that per job the hot path touches only the job hash and the three sets (no per-job token
-- or attempt fields to write and delete).
local K_READY, K_SCHED, K_LEASED, K_DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_JOBS, K_ERR, K_FENCE, K_PAUSED = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_LIMITS, K_TAT = KEYS[9], KEYS[10]

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

-- Makes `ids` ready again with `atts` attempts so far, at their own priority.
local function to_ready(ids, atts)
  if #ids == 0 then return end
  local vals = multi('HMGET', K_JOBS, ids)
  local args = {}
  for i = 1, #ids do
    if vals[i] then
      local prio = head(vals[i])
      args[#args + 1] = -prio
      args[#args + 1] = waiting(ids[i], atts[i])
    end
  end
  bulk('ZADD', K_READY, args)
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
