-- tollgate budget: admit (reserve, cache hit, forced charge), version 3
--
-- KEYS[1]  res   reservations HASH of the team
-- KEYS[2]  exp   reservation expiry ZSET of the team
-- KEYS[3..] one counter HASH per limit, in the caller's order
-- ARGV[1]  request id
-- ARGV[2]  now (epoch seconds; the caller's clock, so tests can move it)
-- ARGV[3]  when the reservation expires (epoch seconds)
-- ARGV[4]  tokens, ARGV[5] nano-dollars (the estimate, or the charge for modes h and f)
-- ARGV[6]  mode: 'r' reserve (add to reserved, record it under the id)
--                'h' hit (add to used at once: a cache hit, or usage known up front)
--                'f' force (add to used, no check, no request counted: usage after fail-open)
-- ARGV[7]  sweep batch, ARGV[8] seconds an expired reservation is remembered for a late settle
-- ARGV[9]  seconds a new counter lives after its window ends
-- ARGV[10] the counters' units and limits, comma-separated: 't2000000,u500000000000,r600'
--          (unit 'r' requests, 't' tokens, 'u' nano-dollars), one per counter key
-- ARGV[11] the counters' window ends (epoch seconds), space-separated, one per counter key
-- Returns one string, 'status,used1,reserved1,refused1,used2,reserved2,refused2,...' (a single
-- bulk reply is much cheaper for the client to read than an array):
--   status 1 admitted, 0 refused (nothing changed), 2 the id already holds a reservation
--   (nothing changed: a replayed reserve); usedN/reservedN after the call; refusedN 1 when
--   counter N is why the request was refused.
-- A counter refuses when this request adds to it (amount > 0) and used + reserved + amount
-- would pass its limit. Requests count 1 on their counter, tokens and dollars their amount.
--
-- Probing (mode 'r' only; ARGV[12] present): the last two keys are then not counters but a
-- probe key (a cached answer under the team's hash tag) and a lock beside it, so the lookup and
-- the reservation cost one round trip together.
-- ARGV[12] lock token, ARGV[13] lock lifetime (ms), ARGV[14] '1': count a hit like mode 'h'
-- with no amount (rpm), '0': leave a hit uncounted (the caller charges it itself).
-- Returns {value, admission} instead of the admission alone:
--   {value, 'status,...' or ''}   the probe key holds a value: nothing reserved, the lock untouched
--   {false, 'status,...'}         a miss: the lock was taken and the reserve ran (a refused reserve
--                                 drops the lock again, since no one will fill the key)
--   {false, ''}                   a miss, but another caller holds the lock: nothing changed

local res, exp = KEYS[1], KEYS[2]
local id, now, expires = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local grace, live = tonumber(ARGV[8]), tonumber(ARGV[9])

-- n: how many of KEYS[3..] are counters.
local function admit(mode, tokens, nano, n)
  sweep(res, exp, now, tonumber(ARGV[7]), grace)

  local status = 1
  if mode == 'r' and redis.call('HEXISTS', res, id) == 1 then
    status = 2
  end

  local units, limits, ends = {}, {}, {}
  for unit, limit in string.gmatch(ARGV[10], '(%a)(%d+)') do
    units[#units + 1] = unit
    limits[#limits + 1] = limit
  end
  for finish in string.gmatch(ARGV[11], '%d+') do
    ends[#ends + 1] = tonumber(finish)
  end

  local out = {'0'}
  local amounts, fresh = {}, {}
  for i = 1, n do
    local unit = units[i]
    local amount
    if unit == 'r' then
      if mode == 'f' then amount = '0' else amount = '1' end
    elseif unit == 't' then
      amount = tokens
    else
      amount = nano
    end
    amounts[i] = amount
    local values = redis.call('HMGET', KEYS[i + 2], 'u', 'r')
    fresh[i] = not values[1] and not values[2]
    local used, reserved = values[1] or '0', values[2] or '0'
    local refused = '0'
    local need = tonumber(amount)
    if mode ~= 'f' and need > 0
        and tonumber(used) + tonumber(reserved) + need > tonumber(limits[i]) then
      refused = '1'
      if status == 1 then status = 0 end
    end
    out[3 * i - 1] = used
    out[3 * i] = reserved
    out[3 * i + 1] = refused
  end

  out[1] = tostring(status)
  if status ~= 1 then
    return table.concat(out, ',')
  end

  local record = {'a', tokens, nano}
  for i = 1, n do
    local key, unit, amount = KEYS[i + 2], units[i], amounts[i]
    if amount ~= '0' then
      if mode == 'r' and unit ~= 'r' then
        out[3 * i] = int(redis.call('HINCRBY', key, 'r', amount))
      else
        out[3 * i - 1] = int(redis.call('HINCRBY', key, 'u', amount))
      end
      if fresh[i] then
        -- Set once, when the window's counter is created: every later write is to a key that
        -- already expires some time after its window, so no TTL read is needed.
        redis.call('EXPIRE', key, math.ceil(ends[i] - now + live))
      end
    end
    if unit ~= 'r' then
      record[#record + 1] = key
      record[#record + 1] = unit
      record[#record + 1] = limits[i]
    end
  end

  if mode == 'r' then
    redis.call('HSET', res, id, cjson.encode(record))
    redis.call('ZADD', exp, expires, id)
    local ttl = math.ceil(expires - now + grace) + 60
    keep(res, ttl)
    keep(exp, ttl)
  end
  return table.concat(out, ',')
end

local n = #KEYS - 2
if not ARGV[12] then
  return admit(ARGV[6], ARGV[4], ARGV[5], n)
end
n = n - 2
local probe, lock = KEYS[n + 3], KEYS[n + 4]
local value = redis.call('GET', probe)
if value then
  if ARGV[14] == '1' then
    return {value, admit('h', '0', '0', n)}
  end
  return {value, ''}
end
if not redis.call('SET', lock, ARGV[12], 'NX', 'PX', ARGV[13]) then
  return {false, ''}
end
local admission = admit(ARGV[6], ARGV[4], ARGV[5], n)
if string.sub(admission, 1, 1) == '0' then
  redis.call('DEL', lock)
end
return {false, admission}
