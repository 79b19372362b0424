-- ARGV: job id. Removes a job that is waiting (ready, in its lane, scheduled or dead) with
-- all its data. Returns 1 when cancelled, 2 when it is leased (running), 0 when not held.
local id = ARGV[1]
local v = redis.call('HGET', K_JOBS, id)
if not v then return 0 end
local _, json = head(v)
local ok, job = pcall(cjson.decode, json)
local max_attempts = 1000
if ok and type(job) == 'table' and tonumber(job.max_attempts) then
  max_attempts = tonumber(job.max_attempts)
end
-- A waiting member is the id, or the id and its attempts so far (see waiting()).
local members = {id}
for att = 1, max_attempts do members[#members + 1] = id .. fmt(att) end
local tenant = redis.call('HGET', K_TENANTS, id)
local sets = {K_READY, K_SCHED, K_DEAD}
if tenant then sets[#sets + 1] = lane_key(tenant) end
local removed = 0
for _, set in ipairs(sets) do
  for i = 1, #members, CHUNK do
    removed = removed + redis.call('ZREM', set, unpack(members, i, math.min(i + CHUNK - 1, #members)))
  end
end
if removed > 0 then
  redis.call('HDEL', K_JOBS, id)
  redis.call('HDEL', K_ERR, id)
  redis.call('HDEL', K_TENANTS, id)
  if tenant and redis.call('EXISTS', lane_key(tenant)) == 0 then
    redis.call('ZREM', K_LANES, tenant)
  end
  return 1
end
-- Leased: its member is the id and a token. Few jobs are leased at once, so a scan is cheap.
local pattern = string.gsub(id, '[%*%?%[%]\\]', '\\%0') .. '*'
local cursor = '0'
repeat
  local r = redis.call('ZSCAN', K_LEASED, cursor, 'MATCH', pattern, 'COUNT', 1000)
  cursor = r[1]
  if #r[2] > 0 then return 2 end
until cursor == '0'
return 0
