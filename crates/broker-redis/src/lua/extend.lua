-- ARGV: lease ms, then lease members (id .. token). Returns 1 per lease still held (now
-- extended), else 0.
local until_ = now_ms() + tonumber(ARGV[1])
local members = {}
for i = 2, #ARGV do members[#members + 1] = ARGV[i] end
local scores = multi('ZMSCORE', K_LEASED, members)
local out, z = {}, {}
for i = 1, #members do
  if scores[i] then
    out[i] = 1
    z[#z + 1] = until_
    z[#z + 1] = members[i]
  else
    out[i] = 0
  end
end
bulk('ZADD', K_LEASED, z, 'XX')
return out
