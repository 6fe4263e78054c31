-- mark_dirty / clear_dirty.
-- KEYS: image hash, runs hash, chunk-index set.
-- ARGV: generation, '1' set / '0' clear, chunk key prefix, node,
--       change JSON without its closing '}' (ends with "version":), then
--       first, last pairs (bit ranges).
-- Replies: {'ok', version} | {'missing'} | {'fenced', current} |
--          {'refused'} (bad range or not a location: the caller rebuilds the
--          exact error from the record).
local img, runs, set = KEYS[1], KEYS[2], KEYS[3]
local gen = generation_of(img)
if gen == nil then return {'missing'} end
if gen ~= tonumber(ARGV[1]) then return {'fenced', tostring(gen)} end
local version = redis.call('HGET', img, 'version')
local n = (#ARGV - 5) / 2
if n == 0 then return {'ok', version} end
local hdr = cjson.decode(redis.call('HGET', img, 'header'))
local gran = hdr.granularity
local total = math.ceil(hdr.size / gran)
local bpb = hdr.block_size / gran
local node = ARGV[4]
local ranges = {}
for i = 1, n do
  local f, l = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  if not f or not l or f >= l or l > total then return {'refused'} end
  ranges[i] = {f, l, math.floor(f / bpb), math.floor((l - 1) / bpb) + 1}
end
-- node must be a location of every block touched: scan the runs.
local all = redis.call('HGETALL', runs)
for j = 1, #all, 2 do
  local start, v = tonumber(all[j]), all[j + 1]
  local semi = string.find(v, ';', 1, true)
  local stop = tonumber(string.sub(v, 1, semi - 1))
  local locs = ',' .. string.sub(v, semi + 1) .. ','
  for i = 1, n do
    local r = ranges[i]
    if start < r[4] and stop > r[3] and
       not string.find(locs, ',' .. node .. '=', 1, true) then
      return {'refused'}
    end
  end
end
local dirty = ARGV[2] == '1'
local bit = dirty and 1 or 0
local byte = dirty and '\255' or '\0'
local CB = 65536 -- bits per chunk (8 KiB)
for i = 1, n do
  local p, l = ranges[i][1], ranges[i][2]
  while p < l do
    local c = math.floor(p / CB)
    local stop = math.min(l, (c + 1) * CB)
    local key = ARGV[3] .. c
    if dirty or redis.call('EXISTS', key) == 1 then
      local j, hi = p - c * CB, stop - c * CB
      while j < hi and j % 8 ~= 0 do
        redis.call('SETBIT', key, j, bit); j = j + 1
      end
      local full = math.floor((hi - j) / 8)
      if full > 0 then
        redis.call('SETRANGE', key, j / 8, string.rep(byte, full)); j = j + full * 8
      end
      while j < hi do
        redis.call('SETBIT', key, j, bit); j = j + 1
      end
      if dirty then
        redis.call('SADD', set, c)
      elseif redis.call('BITCOUNT', key) == 0 then
        redis.call('DEL', key); redis.call('SREM', set, c)
      end
    end
    p = stop
  end
end
local nv = redis.call('HINCRBY', img, 'version', 1)
redis.call('PUBLISH', 'locus:changes', ARGV[5] .. nv .. '}')
return {'ok', tostring(nv)}
