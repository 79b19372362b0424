-- ARGV: queue, '1' to pause or '0' to resume.
if ARGV[2] == '1' then
  redis.call('SET', K_PAUSED, '1')
else
  redis.call('DEL', K_PAUSED)
  redis.call('PUBLISH', 'ferry:wake', ARGV[1])
end
return 1
