-- tollgate budget: shared helpers, version 1
--
-- Prepended to admit.lua, extend.lua and read.lua when they are registered (not a script of
-- its own); settle.lua needs none of it.
--
-- Data, all under one team's hash tag so a Redis Cluster keeps them on one slot:
--   counter  HASH {u = used, r = reserved} for one limit in one window, e.g.
--            <prefix>{team:search}:b:tokens:day:20261126; it expires some time after its window.
--   res      HASH request id -> reservation record (JSON array of strings):
--            {state, tokens, nano, key1, unit1, limit1, key2, unit2, limit2, ...}
--            state 'a' = active, 'x' = expired (its amounts were given back; kept a while so a
--            late settle can still charge what was really used).
--   exp      ZSET request id scored by when its record expires (epoch seconds).
-- Amounts travel as decimal strings and are handed to HINCRBY as they came: Lua's number
-- formatting would turn 1e15 into "1e+15".

local function int(x)
  return string.format('%d', x)
end

-- Raise a key's time to live to at least ttl seconds (never lower it).
local function keep(key, ttl)
  if redis.call('TTL', key) < ttl then
    redis.call('EXPIRE', key, ttl)
  end
end

-- Give back `amount` reserved on counter `key` (if the counter still exists), never below zero.
local function unreserve(key, amount)
  if amount ~= '0' and redis.call('EXISTS', key) == 1 then
    if redis.call('HINCRBY', key, 'r', '-' .. amount) < 0 then
      redis.call('HSET', key, 'r', 0)
    end
  end
end

local function held(record, unit)
  if unit == 't' then return record[2] end
  return record[3]
end

-- Expire up to `batch` reservations due at `now`: active ones give their amounts back and stay
-- `grace` seconds as tombstones; tombstones past their grace are deleted.
local function sweep(res, exp, now, batch, grace)
  local due = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, batch)
  for i = 1, #due do
    local id = due[i]
    local raw = redis.call('HGET', res, id)
    local record = raw and cjson.decode(raw)
    if record and record[1] == 'a' then
      for j = 4, #record, 3 do
        unreserve(record[j], held(record, record[j + 1]))
      end
      record[1] = 'x'
      redis.call('HSET', res, id, cjson.encode(record))
      redis.call('ZADD', exp, now + grace, id)
    else
      redis.call('HDEL', res, id)
      redis.call('ZREM', exp, id)
    end
  end
end
