-- Returns {ready, scheduled, leased, dead, paused}. Scheduled jobs already due count as ready.
local now = now_ms()
local due = redis.call('ZCOUNT', K_SCHED, '-inf', now)
return {
  ready_count() + due,
  redis.call('ZCARD', K_SCHED) - due,
  redis.call('ZCARD', K_LEASED),
  redis.call('ZCARD', K_DEAD),
  redis.call('EXISTS', K_PAUSED),
}
