-- al_add ('add'), al_remove ('rem'), al_reset ('reset').
-- KEYS: image hash, log hash (generation, extent_size), extent set.
-- ARGV: op, generation, extent size (reset only, else ''), extents...
-- Replies: {'ok'} (add, rem) | {'ok', old generation, old extent size,
--          old extents...} (reset) | {'missing'} | {'fenced', current} |
--          {'notover', log generation}
local img, log, set = KEYS[1], KEYS[2], KEYS[3]
local gen = generation_of(img)
if gen == nil then return {'missing'} end
if gen ~= tonumber(ARGV[2]) then return {'fenced', tostring(gen)} end
local cur = redis.call('HMGET', log, 'generation', 'extent_size')
local function each(cmd)
  for i = 4, #ARGV, 1000 do
    redis.call(cmd, set, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
if ARGV[1] == 'reset' then
  local old = redis.call('SMEMBERS', set)
  redis.call('DEL', set)
  redis.call('HSET', log, 'generation', ARGV[2], 'extent_size', ARGV[3])
  each('SADD')
  local out = {'ok', cur[1] or '0', cur[2] or ''}
  for i = 1, #old do out[#out + 1] = old[i] end
  return out
end
if tonumber(cur[1] or '0') ~= gen then return {'notover', cur[1] or '0'} end
each(ARGV[1] == 'add' and 'SADD' or 'SREM')
return {'ok'}
