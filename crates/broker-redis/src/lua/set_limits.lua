-- ARGV: field, value pairs for the queue's limits hash; a value of '' removes the field.
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', K_LIMITS, ARGV[i])
  else
    redis.call('HSET', K_LIMITS, ARGV[i], ARGV[i + 1])
  end
end
-- A changed rate starts from a clean slate rather than a debt run up under the old one.
redis.call('DEL', K_TAT)
return 1
