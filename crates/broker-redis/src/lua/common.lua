-- Shared by every Ferry script. KEYS[1..11] are one queue's keys, all with the same hash tag
-- so that they live in one Redis Cluster slot:
--   1 ready  (zset: score -priority, member id; ties break on the id, which is time-ordered)
--   2 sched  (zset: score run_at ms, member id)
--   3 leased (zset: score lease expiry ms, member id)
--   4 dead   (zset: score dead-at ms, member id)
--   5 jobs   (hash: id -> envelope JSON)
--   6 att    (hash: id -> deliveries so far)
--   7 tok    (hash: id -> current fencing token, only while leased)
--   8 pri    (hash: id -> priority, only when not 0)
--   9 err    (hash: id -> last error, only while dead)
--  10 fence  (string: the queue's token counter)
--  11 paused (string: present while the queue is paused)
-- Member ids are the 16 raw bytes of the job's UUIDv7.
local K_READY, K_SCHED, K_LEASED, K_DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_JOBS, K_ATT, K_TOK, K_PRI, K_ERR = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_FENCE, K_PAUSED = KEYS[10], KEYS[11]

-- Lua's unpack has a stack limit (about 8,000 values): every variadic call goes in chunks.
local CHUNK = 4000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

local function hmget(key, ids)
  local out = {}
  local n = #ids
  for i = 1, n, CHUNK do
    local part = redis.call('HMGET', key, unpack(ids, i, math.min(i + CHUNK - 1, n)))
    for k = 1, #part do out[#out + 1] = part[k] end
  end
  return out
end

-- Makes `ids` ready again at their own priority.
local function to_ready(ids)
  if #ids == 0 then return end
  local pr = hmget(K_PRI, ids)
  local args = {}
  for i = 1, #ids do
    args[#args + 1] = -(tonumber(pr[i]) or 0)
    args[#args + 1] = ids[i]
  end
  bulk('ZADD', K_READY, args)
end

-- Forgets everything about `ids` but their idempotency keys (which expire on their own).
local function forget(ids)
  if #ids == 0 then return end
  bulk('HDEL', K_JOBS, ids)
  bulk('HDEL', K_ATT, ids)
  bulk('HDEL', K_PRI, ids)
end

-- Tells idle consumers (in any process) that `queue` has work, but only on the edge from
-- empty: a consumer only waits after finding nothing ready, so later pushes need no message.
local function wake_if(was_empty, queue)
  if was_empty then redis.call('PUBLISH', 'ferry:wake', queue) end
end
