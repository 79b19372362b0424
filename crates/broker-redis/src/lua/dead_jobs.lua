-- ARGV: limit. Returns {value1, attempts1, error1, ...}, oldest first.
local ids = redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[1]) - 1)
local vals, errs = multi('HMGET', K_JOBS, ids), multi('HMGET', K_ERR, ids)
local out = {}
for i = 1, #ids do
  if vals[i] then
    local att, err = 0, ''
    if errs[i] then att, err = head(errs[i]) end
    out[#out + 1] = vals[i]
    out[#out + 1] = att
    out[#out + 1] = err
  end
end
return out
