-- acquire_lease. KEYS: image hash, lease hash.
-- ARGV: holder, now (ms), expires (ms), name as JSON, holder as JSON.
-- Replies: {'ok', generation, version} | {'missing'} |
--          {'held', holder, generation, expires}
local img, lk = KEYS[1], KEYS[2]
local gen = generation_of(img)
if gen == nil then return {'missing'} end
local cur = redis.call('HMGET', lk, 'holder', 'generation', 'expires')
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[3]) > tonumber(ARGV[2]) then
  return {'held', cur[1], cur[2], cur[3]}
end
gen = gen + 1
redis.call('HSET', img, 'generation', tostring(gen))
local nv = redis.call('HINCRBY', img, 'version', 1)
redis.call('HSET', lk, 'holder', ARGV[1], 'generation', tostring(gen), 'expires', ARGV[3])
redis.call('PUBLISH', 'locus:changes', '{"type":"lease","name":' .. ARGV[4] ..
  ',"holder":' .. ARGV[5] .. ',"generation":' .. gen .. ',"version":' .. nv .. '}')
return {'ok', tostring(gen), tostring(nv)}
