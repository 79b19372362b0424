-- ARGV: lease ms, then id, token pairs. Returns 1 per lease still held (now extended), else 0.
local until_ = now_ms() + tonumber(ARGV[1])
local ids, toks = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  toks[#toks + 1] = ARGV[i + 1]
end
local cur = hmget(K_TOK, ids)
local out, z = {}, {}
for i = 1, #ids do
  if cur[i] == toks[i] then
    out[i] = 1
    z[#z + 1] = until_; z[#z + 1] = ids[i]
  else
    out[i] = 0
  end
end
bulk('ZADD', K_LEASED, z, 'XX')
return out
