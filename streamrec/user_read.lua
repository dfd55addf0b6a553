-- Read one user's state for an answer, atomically (a script runs alone), in one round trip (docs/STATE.md,
-- "One consistent read"). Read-only.
--
-- KEYS: history, prefs, bought, searches, version (one user's group: one hash slot); on one Redis also
--       the catalog generation and the active model version (other slots: a cluster reads them apart).
-- ARGV: the stamp of the answer the caller holds, as strings: n, s, and (with the last two KEYS) the
--       catalog generation and the active model ('' for none); no ARGV: nothing held.
-- Returns {n, s, generation, model} when they equal ARGV (the held answer stands: nothing else is sent),
-- else {n, s, generation, model, history, prefs (member, score, member, score ...), bought, searches}.
-- Missing values are '' (n, s, generation: read as 0; model: none).
local v = redis.call('HMGET', KEYS[5], 'n', 's')
local head = {v[1] or '', v[2] or '', '', ''}
if #KEYS >= 7 then
  head[3] = redis.call('GET', KEYS[6]) or ''
  head[4] = redis.call('GET', KEYS[7]) or ''
end
if #ARGV > 0 then
  local same = true
  for i = 1, #ARGV do
    if head[i] ~= ARGV[i] then same = false end
  end
  if same then return head end
end
head[5] = redis.call('LRANGE', KEYS[1], 0, -1)
head[6] = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
head[7] = redis.call('ZRANGE', KEYS[3], 0, -1)
head[8] = redis.call('LRANGE', KEYS[4], 0, -1)
return head
