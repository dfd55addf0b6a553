-- Upsert catalog records; a record older than the stored one (by ts) is ignored, so replays and
-- out-of-order delivery converge on the newest record.
-- ARGV[1]: catalog key template, ARGV[2]: stats key, ARGV[3]: JSON array of {id, ts, fields = {k = v}}
-- Returns the number of records written.
local tpl, stats = ARGV[1], ARGV[2]
local records = cjson.decode(ARGV[3])
local written = 0
for _, r in ipairs(records) do
  local key = string.format(tpl, r.id)
  local cur = redis.call('HGET', key, 'ts')
  if not cur or tonumber(cur) <= r.ts then
    local args = {}
    for k, v in pairs(r.fields) do
      args[#args + 1] = k
      args[#args + 1] = v
    end
    redis.call('HSET', key, unpack(args))
    if not cur then redis.call('HINCRBY', stats, 'items', 1) end
    written = written + 1
  end
end
return written
