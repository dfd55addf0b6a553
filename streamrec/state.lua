-- Fold a batch of validated events into streamrec's Redis state, atomically.
--
-- ARGV[1]: JSON config {tpl = key templates (keys.py), w = type weights, ...scoring settings}
-- ARGV[2]: JSON array of events {id, type, user, item, terms, ts}
-- Returns {applied, duplicates}.
--
-- Each event first claims its event_id (SET NX EX); only an event that claims it is applied, and the
-- claim and every write happen inside this one script, so a replayed event changes nothing and a
-- crash can never leave an event half-applied. Decayed totals are kept in log space (scoring.py).

local C = cjson.decode(ARGV[1])
local events = cjson.decode(ARGV[2])
local T = C.tpl
local fmt = string.format
local call = redis.call

local function log_add(key, member, x)
  local cur = call('ZSCORE', key, member)
  if cur then
    cur = tonumber(cur)
    local hi, lo = cur, x
    if x > cur then hi, lo = x, cur end
    x = hi + math.log(1 + math.exp(lo - hi))
  end
  call('ZADD', key, x, member)
end

local function log_sub(key, member, x)
  -- subtract e^x from the total; drop the member when nothing is left
  local cur = call('ZSCORE', key, member)
  if not cur then return end
  cur = tonumber(cur)
  if x >= cur - 1e-9 then
    call('ZREM', key, member)
  else
    call('ZADD', key, cur + math.log(1 - math.exp(x - cur)), member)
  end
end

local function cap_lowest(key, max, slack)
  local card = call('ZCARD', key)
  if card > max + slack then
    call('ZREMRANGEBYRANK', key, 0, card - max - 1)
  end
end

local function trim_neighbours(key)
  -- keep the neighbours with the best popularity-normalised score, not the merely popular ones
  local card = call('ZCARD', key)
  if card <= C.nbr_max + C.nbr_slack then return end
  local flat = call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local members = {}
  for i = 1, #flat, 2 do members[#members + 1] = flat[i] end
  local counts = call('HMGET', T.item_counts, unpack(members))
  local scored = {}
  for i = 1, #members do
    local n = tonumber(counts[i]) or 1
    if n < 1 then n = 1 end
    scored[i] = {members[i], tonumber(flat[2 * i]) / (n ^ C.alpha)}
  end
  table.sort(scored, function(a, b)
    -- weakest first; on a tie the larger id goes first, as rank() prefers the smaller one
    if a[2] == b[2] then return a[1] > b[1] end
    return a[2] < b[2]
  end)
  local drop = {}
  for i = 1, card - C.nbr_max do drop[#drop + 1] = scored[i][1] end
  call('ZREM', key, unpack(drop))
end

local function touch(key, ttl)
  call('EXPIRE', key, ttl)
end

local function split_entry(entry)
  -- history entries are "item|ts|type"; item ids may themselves hold '|', so split from the right
  local item, ts, typ = string.match(entry, '^(.*)|(%d+)|([%w_]+)$')
  return item, tonumber(ts), typ
end

local function apply_search(e)
  local qk = fmt(T.searches, e.user)
  call('LPUSH', qk, fmt('%d|%s', e.ts, table.concat(e.terms, '\t')))
  call('LTRIM', qk, 0, C.searches_max - 1)
  touch(qk, C.user_ttl)
end

local function credit_searches(e, w)
  local qk = fmt(T.searches, e.user)
  local recent = call('LRANGE', qk, 0, 2)
  local credited = {}
  for _, entry in ipairs(recent) do
    local qts, terms = string.match(entry, '^(%d+)|(.*)$')
    qts = tonumber(qts)
    if qts and e.ts >= qts and e.ts - qts <= C.search_window then
      for term in string.gmatch(terms, '[^\t]+') do
        if not credited[term] then
          credited[term] = true
          local tk = fmt(T.term, term)
          call('ZINCRBY', tk, w * C.w_search, e.item)
          cap_lowest(tk, C.term_max, 10)
          touch(tk, C.term_ttl)
        end
      end
    end
  end
end

local function apply_item_event(e)
  local w = C.w[e.type] or 0
  local u, item, ts = e.user, e.item, e.ts
  local pk = fmt(T.prefs, u)
  if w <= 0 then
    -- negative feedback lowers the user's interest only; it is no co-occurrence and no popularity
    if w < 0 then log_sub(pk, item, math.log(-w) + ts * C.pref_rate) end
    touch(pk, C.user_ttl)
    return
  end

  log_add(pk, item, math.log(w) + ts * C.pref_rate)
  cap_lowest(pk, C.pref_max, 0)
  touch(pk, C.user_ttl)

  if e.type == 'purchase' then
    local bk = fmt(T.bought, u)
    call('ZADD', bk, ts, item)
    cap_lowest(bk, C.bought_max, 0)
    touch(bk, C.user_ttl)
  end

  -- co-occurrence with the user's recent actions, by order and distance, within a time gap
  local hk = fmt(T.history, u)
  local prev = call('LRANGE', hk, 0, C.window - 1)
  local first = prev[1] and split_entry(prev[1])
  if first ~= item then
    local paired = {}
    local nk = fmt(T.neighbours, item)
    for pos, entry in ipairs(prev) do
      local pitem, pts = split_entry(entry)
      -- history is in arrival order, so a late event may be older than entries before it
      if pitem and pts and math.abs(ts - pts) <= C.max_gap then
        if pitem ~= item and not paired[pitem] then
          paired[pitem] = true
          local c = C.pos_decay ^ (pos - 1)
          local pk2 = fmt(T.neighbours, pitem)
          call('ZINCRBY', pk2, c, item)
          call('ZINCRBY', nk, c * C.backward, pitem)
          trim_neighbours(pk2)
        end
      end
    end
    trim_neighbours(nk)
  end
  call('HINCRBY', T.item_counts, item, 1)

  call('LPUSH', hk, fmt('%s|%d|%s', item, ts, e.type))
  call('LTRIM', hk, 0, C.history_max - 1)
  touch(hk, C.user_ttl)

  credit_searches(e, w)

  local cat = call('HGET', fmt(T.catalog, item), 'category')
  log_add(T.popular, item, math.log(w) + ts * C.pop_rate)
  log_add(T.trending, item, math.log(w) + ts * C.trend_rate)
  cap_lowest(T.popular, C.popular_max, 1000)
  cap_lowest(T.trending, C.popular_max, 1000)
  if cat and cat ~= '' then
    local ck, tk = fmt(T.popular_cat, cat), fmt(T.trending_cat, cat)
    log_add(ck, item, math.log(w) + ts * C.pop_rate)
    log_add(tk, item, math.log(w) + ts * C.trend_rate)
    cap_lowest(ck, C.popular_max, 1000)
    cap_lowest(tk, C.popular_max, 1000)
  end
end

local applied, duplicates = 0, 0
local clock = tonumber(call('GET', T.clock) or '0')
local newest = clock
for _, e in ipairs(events) do
  if call('SET', fmt(T.dedupe, e.id), '1', 'NX', 'EX', C.dedupe_ttl) then
    if e.type == 'search' then apply_search(e) else apply_item_event(e) end
    call('HINCRBY', T.stats, 'applied:' .. e.type, 1)
    applied = applied + 1
    if e.ts > newest then newest = e.ts end
  else
    duplicates = duplicates + 1
  end
end
if newest > clock then call('SET', T.clock, fmt('%d', newest)) end
return {applied, duplicates}
