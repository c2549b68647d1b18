-- tollgate budget: change a reservation's amounts (failover to a dearer deployment), version 1
--
-- KEYS[1]  res   reservations HASH of the team
-- KEYS[2]  exp   reservation expiry ZSET of the team
-- ARGV[1]  request id
-- ARGV[2]  new tokens, ARGV[3] new nano-dollars (replace the reserved amounts)
-- ARGV[4]  now, ARGV[5] new expiry (epoch seconds; 0 keeps the current one, a lower one is
--          ignored), ARGV[6] sweep batch, ARGV[7] seconds an expired reservation is remembered
-- Returns 1 changed, 0 refused (a counter cannot cover the increase; nothing changed),
--        -1 no active reservation under this id (nothing changed).
-- An increase is checked like a reserve (used + reserved + increase <= limit on every counter
-- it grows); a decrease always succeeds.

local res, exp, id = KEYS[1], KEYS[2], ARGV[1]
local now = tonumber(ARGV[4])
sweep(res, exp, now, tonumber(ARGV[6]), tonumber(ARGV[7]))

local raw = redis.call('HGET', res, id)
local record = raw and cjson.decode(raw)
if not record or record[1] ~= 'a' then
  return -1
end

local new = {t = ARGV[2], u = ARGV[3]}
local delta = {
  t = tonumber(ARGV[2]) - tonumber(record[2]),
  u = tonumber(ARGV[3]) - tonumber(record[3]),
}
for j = 4, #record, 3 do
  local key, unit, limit = record[j], record[j + 1], tonumber(record[j + 2])
  local grow = delta[unit]
  if grow > 0 then
    local values = redis.call('HMGET', key, 'u', 'r')
    local used, reserved = tonumber(values[1]) or 0, tonumber(values[2]) or 0
    if used + reserved + grow > limit then
      return 0
    end
  end
end

for j = 4, #record, 3 do
  local key, unit = record[j], record[j + 1]
  local change = delta[unit]
  if change ~= 0 and redis.call('EXISTS', key) == 1 then
    if redis.call('HINCRBY', key, 'r', int(change)) < 0 then
      redis.call('HSET', key, 'r', 0)
    end
  end
end
record[2], record[3] = new.t, new.u
redis.call('HSET', res, id, cjson.encode(record))

local expires = tonumber(ARGV[5])
if expires > 0 and expires > (tonumber(redis.call('ZSCORE', exp, id)) or 0) then
  redis.call('ZADD', exp, expires, id)
  local ttl = math.ceil(expires - now + tonumber(ARGV[7])) + 60
  keep(res, ttl)
  keep(exp, ttl)
end
return 1
