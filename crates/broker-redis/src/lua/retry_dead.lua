-- ARGV: queue, then the ids to retry (none: every dead job). Moves them back to ready with a
-- fresh attempt budget. Returns how many moved.
local queue = ARGV[1]
local ids = {}
if #ARGV == 1 then
  ids = redis.call('ZRANGE', K_DEAD, 0, -1)
else
  local cand = {}
  for i = 2, #ARGV do cand[#cand + 1] = ARGV[i] end
  local scores = multi('ZMSCORE', K_DEAD, cand)
  for i = 1, #cand do
    if scores[i] then ids[#ids + 1] = cand[i] end
  end
end
if #ids == 0 then return 0 end
local was_empty = not any_ready()
bulk('ZREM', K_DEAD, ids)
bulk('HDEL', K_ERR, ids)
local zeros = {}
for i = 1, #ids do zeros[i] = 0 end
to_ready(ids, zeros)
wake_if(was_empty, queue)
return #ids
