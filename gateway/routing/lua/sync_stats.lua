-- sync_stats.lua v1: push this gateway's routing stats, drop silent gateways, read everyone's.
--
-- KEYS[1]  {prefix}routing:v1:snapshots  hash: gateway id -> snapshot (JSON, see routing/sync.py)
-- KEYS[2]  {prefix}routing:v1:seen       sorted set: gateway id -> unix time of its last push
-- ARGV[1]  this gateway's id
-- ARGV[2]  this gateway's snapshot
-- ARGV[3]  now, unix seconds (the pushing gateway's clock)
-- ARGV[4]  forget after, seconds: gateways silent longer are deleted from both keys
--
-- Returns the hash's contents as a flat array {id1, snapshot1, id2, snapshot2, ...}, this
-- gateway's own entry included (the caller skips it).
local now = tonumber(ARGV[3])
local forget = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - forget)
for _, id in ipairs(stale) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
-- Keys outlive their last writer only briefly: a stopped fleet leaves nothing behind.
local ttl = math.ceil(forget * 2)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return redis.call('HGETALL', KEYS[1])
