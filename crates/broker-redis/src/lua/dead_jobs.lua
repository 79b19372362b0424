-- ARGV: limit. Returns {env1, attempts1, error1, ...}, oldest first.
local ids = redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[1]) - 1)
local envs, atts, errs = hmget(K_JOBS, ids), hmget(K_ATT, ids), hmget(K_ERR, ids)
local out = {}
for i = 1, #ids do
  if envs[i] then
    out[#out + 1] = envs[i]
    out[#out + 1] = tonumber(atts[i]) or 0
    out[#out + 1] = errs[i] or ''
  end
end
return out
