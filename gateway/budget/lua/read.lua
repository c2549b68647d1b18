-- tollgate budget: read counters for a snapshot, version 1
--
-- KEYS[1]  res   reservations HASH of the team
-- KEYS[2]  exp   reservation expiry ZSET of the team
-- KEYS[3..] counter HASHes to read
-- ARGV[1]  now, ARGV[2] sweep batch, ARGV[3] seconds an expired reservation is remembered
-- Returns {used1, reserved1, used2, reserved2, ...} after sweeping expired reservations, so
-- what a dead gateway held is not shown as reserved.

sweep(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local out = {}
for i = 3, #KEYS do
  local values = redis.call('HMGET', KEYS[i], 'u', 'r')
  out[#out + 1] = tonumber(values[1]) or 0
  out[#out + 1] = tonumber(values[2]) or 0
end
return out
