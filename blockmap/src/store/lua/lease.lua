-- renew_lease ('renew') and release_lease ('release').
-- KEYS: image hash, lease hash. ARGV: op, holder, generation, expires (ms),
-- name as JSON.
-- Replies: {'ok'} | {'missing'} | {'fenced', current} | {'notheld'}
local img, lk = KEYS[1], KEYS[2]
local gen = generation_of(img)
if gen == nil then return {'missing'} end
if gen ~= tonumber(ARGV[3]) then return {'fenced', tostring(gen)} end
local cur = redis.call('HMGET', lk, 'holder', 'generation')
if cur[1] ~= ARGV[2] or tonumber(cur[2]) ~= gen then return {'notheld'} end
if ARGV[1] == 'renew' then
  redis.call('HSET', lk, 'expires', ARGV[4])
else
  redis.call('DEL', lk)
  local v = redis.call('HGET', img, 'version')
  redis.call('PUBLISH', 'locus:changes', '{"type":"lease","name":' .. ARGV[5] ..
    ',"holder":null,"generation":' .. gen .. ',"version":' .. v .. '}')
end
return {'ok'}
