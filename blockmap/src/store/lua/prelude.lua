-- Shared by every writer script. KEYS[1] is locus:image:{name}.
-- The image's generation: the `generation` field, or the header's for an
-- image written before that field existed. nil when the image is absent.
local function generation_of(img)
  local g = redis.call('HGET', img, 'generation')
  if g then return tonumber(g) end
  local h = redis.call('HGET', img, 'header')
  if not h then return nil end
  return cjson.decode(h).generation
end
