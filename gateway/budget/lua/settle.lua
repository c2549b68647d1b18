-- tollgate budget: settle or release a reservation, version 3
--
-- KEYS[1]  res   reservations HASH of the team
-- KEYS[2]  exp   reservation expiry ZSET of the team
-- ARGV[1]  request id
-- ARGV[2]  tokens used, ARGV[3] nano-dollars used (ignored on release)
-- ARGV[4]  mode: 's' settle (give back what was reserved, charge what was used, even past the
--          limit), 'r' release (give back, charge nothing)
-- Returns 1 done, 2 done late (the reservation had expired and its amounts were already given
-- back: only the usage is charged), 0 no such reservation (already settled or released, or
-- forgotten long ago): nothing changed, which makes a second settle a no-op.
-- KEYS[3], KEYS[4] (optional) a probe key and its lock, as taken by admit's probing: the key is
--          written first (ARGV[6], when not empty, for ARGV[7] ms), then the lock dropped if it
--          still holds ARGV[5]; this happens whatever the reservation's state.
-- The usage goes to the counters of the windows the reservation was made in, even if a window
-- has ended since; a counter that has expired meanwhile is left alone.

local res, exp, id = KEYS[1], KEYS[2], ARGV[1]
if KEYS[3] then
  if ARGV[6] ~= '' then
    redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
  end
  if redis.call('GET', KEYS[4]) == ARGV[5] then
    redis.call('DEL', KEYS[4])
  end
end
local raw = redis.call('HGET', res, id)
if not raw then
  return 0
end

local record = cjson.decode(raw)
local active = record[1] == 'a'
local settle = ARGV[4] == 's'
for j = 4, #record, 3 do
  local key = record[j]
  if redis.call('EXISTS', key) == 1 then
    local reserved, used
    if record[j + 1] == 't' then
      reserved, used = record[2], ARGV[2]
    else
      reserved, used = record[3], ARGV[3]
    end
    if active and reserved ~= '0' and redis.call('HINCRBY', key, 'r', '-' .. reserved) < 0 then
      redis.call('HSET', key, 'r', 0)
    end
    if settle and used ~= '0' then
      redis.call('HINCRBY', key, 'u', used)
    end
  end
end
redis.call('HDEL', res, id)
redis.call('ZREM', exp, id)
if active then
  return 1
end
return 2
