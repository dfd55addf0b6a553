-- Fold events and catalog records into streamrec's Redis state (docs/STATE.md).
--
-- ARGV[1]: JSON config {tpl = key templates (keys.py), w = type weights, ...scoring settings}
-- ARGV[2]: the mode, one stage or a whole schedule:
--   "all"      one Redis: every stage of a batch of events in this one call, atomically
--   "catalog"  one Redis: a batch of catalog records (upserts, deletions) and the copies that follow them
--   "user"     cluster, user stage: the events of the users of one hash slot -> outcomes + effects
--   "item"     cluster, item stage: effects on the items and search terms of one slot -> copies + trims
--   "copies"   cluster, global stage: ZADD GT / ZREM on popularity and trending shards of one slot
--   "trim"     cluster: trim over-full neighbour lists of one slot, given their members' counts
--   "ack"      cluster: drop the user stage's outbox entries once every later stage is done
--   "stats"    cluster: add a batch's counters to its partition's stats, exactly once
--   "citem"    cluster, catalog stage: the catalog records of one slot -> copies to move, count changes
--   "cack"     cluster: drop the catalog stage's outbox fields once its copies and stats are done
-- ARGV[3]: JSON input of the mode (see each entry point at the bottom).
--
-- Every decayed total is kept in log space, ln(sum w * 2^(t/h)) (scoring.py), so it never overflows and
-- never needs rewriting. Time is the event's ts capped at the worker's wall clock ("wall"): a client whose
-- clock runs ahead cannot move decay for everyone else.

local C = cjson.decode(ARGV[1])
local MODE = ARGV[2]
local IN = cjson.decode(ARGV[3])
local T = C.tpl
local fmt = string.format
local call = redis.call
local mlog, mexp = math.log, math.exp
local WALL = IN.wall or 0
local NEG = -1e308

-- --------------------------------------------------------------------------------------------- helpers

local function lse(a, b)
  -- ln(e^a + e^b); a may be nil (an empty total)
  if not a then return b end
  if b > a then a, b = b, a end
  return a + mlog(1 + mexp(b - a))
end

local function zlog_add(key, member, x)
  local cur = call('ZSCORE', key, member)
  local v = lse(cur and tonumber(cur), x)
  return call('ZADD', key, v, member), v
end

local function zlog_sub(key, member, x)
  -- subtract e^x from a log total; drop the member when nothing is left
  local cur = call('ZSCORE', key, member)
  if not cur then return end
  cur = tonumber(cur)
  if x >= cur - 1e-9 then
    call('ZREM', key, member)
  else
    call('ZADD', key, cur + mlog(1 - mexp(x - cur)), member)
  end
end

local function cap_lowest(key, max, slack)
  local card = call('ZCARD', key)
  if card > max + slack then
    call('ZREMRANGEBYRANK', key, 0, card - max - 1)
  end
end

local ttl_set = {}
local function touch(key, ttl)
  -- refresh a key's time to live once per call (the key's owner is active)
  if ttl_set[key] then return end
  if call('EXPIRE', key, ttl) == 1 then ttl_set[key] = true end  -- a key created later still gets one
end

local function num(x)
  -- a number as text that reads back to the same double (cjson keeps only 14 digits)
  return fmt('%.17g', x)
end

local function split_entry(entry)
  -- history entries are "item|ts|type"; item ids may themselves hold '|', so split from the right
  local item, ts, typ = string.match(entry, '^(.*)|(%d+)|([%w_]+)$')
  return item, tonumber(ts), typ
end

-- Errors that mean "Redis cannot do this now", not "this event is wrong": they abort the whole call so
-- that the worker waits and retries (Redis refuses a script's first write when full, so nothing was written).
local TRANSIENT = {'OOM', 'READONLY', 'LOADING', 'BUSY', 'MASTERDOWN', 'TRYAGAIN', 'CLUSTERDOWN',
                   'MISCONF', 'NOREPLICAS', 'MOVED', 'ASK', 'NOSCRIPT'}
local function err_text(e)
  if type(e) == 'table' then return tostring(e.err or e[1]) end
  return tostring(e)
end
local function is_transient(msg)
  -- the code stands at the start, or after ": " or "-" (Redis quotes a refused command's error as
  -- "@user_script: 12: -OOM command not allowed ...")
  for _, code in ipairs(TRANSIENT) do
    local word = code .. ' '
    if string.sub(msg, 1, #word) == word or string.sub(msg, 1, #word + 1) == '-' .. word
      or string.find(msg, ': ' .. word, 1, true) or string.find(msg, ': -' .. word, 1, true) then
      return true
    end
  end
  return false
end

local function guard(key)
  -- The call's first write, and one Redis refuses when it is full (HSET is a deny-oom command): once a
  -- script has written anything, even a command that frees memory (ZREMRANGEBYSCORE, DEL), Redis lets
  -- every later write through past maxmemory. So a full Redis refuses the whole call, before any write,
  -- and the worker waits instead of folding past the limit.
  call('HSET', key, 'guard', '1')
end

-- Items whose {i:<item>} keys this call changed (activity, neighbour list, catalog record): published on
-- the changes channel at the end of the call, so that API processes drop what they cached of them
-- (docs/STATE.md, "Fresh caches"). Ids hold no control characters (the contract), so '\n' separates them.
-- An item whose only change is its count is published as "<item>\t<log count>" (the value HSET stored,
-- as the shortest text that reads back as the same double): API processes take the new count from the
-- message instead of reading it again, and keep what only depends on the item's list and record.
local CHANGED, COUNTED = {}, {}
local function changed(item)
  CHANGED[item] = true
end
local function count_changed(item, n)
  COUNTED[item] = n
end
local function publish_changes()
  local ids = {}
  for item in pairs(CHANGED) do ids[#ids + 1] = item end
  for item, n in pairs(COUNTED) do ids[#ids + 1] = item .. '\t' .. fmt('%.17g', n) end
  if #ids == 0 then return end
  call('PUBLISH', T.changes, table.concat(ids, '\n'))
end

-- ------------------------------------------------------------------------------- the user stage

-- Outcomes per event: 0 applied, 1 duplicate (offset at or below the watermark, or event id claimed
-- within the dedupe window), 2 erased (the user was erased after this event), or a string: refused.
local APPLIED, DUPLICATE, ERASED = 0, 1, 2

-- A user's history and searches are kept in event-time order, newest first, whatever order events
-- arrive in: a late or replayed event takes its event-time place, and a bounded list keeps the newest
-- entries by ts (an event older than a full list's oldest entry is not kept).

local function place(list, ts, ts_of)
  -- the 0-based index an entry of time ts takes in a newest-first list: before the first entry not newer
  -- than it (an equal ts goes first, as the later arrival); entries whose ts cannot be read are passed
  for i, entry in ipairs(list) do
    local t = ts_of(entry)
    if t and t <= ts then return i - 1 end
  end
  return #list
end

local function history_ts(entry)
  local _, ts = split_entry(entry)
  return ts
end

local function search_entry(entry)
  -- "ts|term\tterm..." -> ts, terms text
  local qts, terms = string.match(entry, '^(%d+)|(.*)$')
  return tonumber(qts), terms
end

local function search_ts(entry)
  return (search_entry(entry))
end

local function insert_at(key, list, at, entry, max)
  -- put entry at 0-based index at of key (whose content is list), keeping the first max entries
  if at >= max then return end
  if at == 0 then
    call('LPUSH', key, entry)
  elseif at >= #list then
    call('RPUSH', key, entry)
  else
    -- the pivot is the first entry holding that text: equal texts have equal ts, so they stand together
    call('LINSERT', key, 'BEFORE', list[at + 1], entry)
  end
  call('LTRIM', key, 0, max - 1)
end

local function pair(ops, older, newer, c, pair_ts)
  -- co-occurrence of two actions in event-time order: forward (older -> newer) weighs c, backward c * backward
  local tse = math.min(pair_ts, WALL)
  ops[#ops + 1] = {'nb', older, newer, num(mlog(c) + tse * C.cooc_rate), tse}
  ops[#ops + 1] = {'nb', newer, older, num(mlog(c * C.backward) + tse * C.cooc_rate), tse}
end

local function credit_searches(searches, item, item_ts, w, ops)
  -- credit item (acted on at item_ts with weight w) to the terms of up to three of the searches (newest
  -- first by ts) made at most search_window before it, each term once. ops nil: only return the terms.
  local credited, seen = {}, 0
  for _, entry in ipairs(searches) do
    local qts, terms = search_entry(entry)
    if qts and qts <= item_ts and item_ts - qts <= C.search_window then
      seen = seen + 1
      for term in string.gmatch(terms, '[^\t]+') do
        if not credited[term] then
          credited[term] = true
          if ops then ops[#ops + 1] = {'term', term, item, num(w * C.w_search)} end
        end
      end
      if seen >= 3 then break end
    end
  end
  return credited
end

local function user_effects(e, w, tse, ops, hist, at)
  -- the item-side effects of one event on an item, in the order they are applied. hist: the user's
  -- history (newest first, by ts) before this event; at: the index this event takes in it.
  local u, item, ts = e.user, e.item, e.ts
  ops[#ops + 1] = {'occ', item, e.s, num(mlog(w) + tse * C.pop_rate), num(mlog(w) + tse * C.trend_rate),
                   num(tse * C.cooc_rate), tse}
  -- pairs with the actions next to it in event time: up to `window` older ones (the event follows them)
  -- and, for a late event, up to `window` newer ones (they follow it), weighed by their distance in
  -- event-time order. A repeat of an adjacent action adds no pairs (its neighbours are paired already).
  local older, newer = hist[at + 1], hist[at]
  if not (older and split_entry(older) == item) and not (newer and split_entry(newer) == item) then
    local paired = {}
    for d = 1, C.window do
      local entry = hist[at + d]
      if not entry then break end
      local pitem, pts = split_entry(entry)
      if pitem and pts and math.abs(ts - pts) <= C.max_gap and pitem ~= item and not paired[pitem] then
        paired[pitem] = true
        pair(ops, pitem, item, C.pos_decay ^ (d - 1), ts)
      end
    end
    for d = 1, math.min(C.window, at) do
      local nitem, nts = split_entry(hist[at + 1 - d])
      if nitem and nts and math.abs(nts - ts) <= C.max_gap and nitem ~= item and not paired[nitem] then
        paired[nitem] = true
        pair(ops, item, nitem, C.pos_decay ^ (d - 1), nts)
      end
    end
  end
  -- search-term credit: the action follows, within the window, one of the user's searches (by event time)
  credit_searches(call('LRANGE', fmt(T.searches, u), 0, -1), item, ts, w, ops)
end

local function fold_search(e, ops)
  -- a search at its event-time place; a late search is credited with the actions already folded that
  -- followed it within the window (an action folded after it credits it itself), except terms such an
  -- action credited to another of the user's searches
  local qk = fmt(T.searches, e.user)
  local searches = call('LRANGE', qk, 0, -1)
  local entry = fmt('%d|%s', e.ts, table.concat(e.terms, '\t'))
  insert_at(qk, searches, place(searches, e.ts, search_ts), entry, C.searches_max)
  touch(qk, C.user_ttl)
  local hist = call('LRANGE', fmt(T.history, e.user), 0, -1)
  for _, h in ipairs(hist) do
    local hitem, hts, htype = split_entry(h)
    local w = C.w[htype] or 0
    if hitem and hts and w > 0 and hts >= e.ts and hts - e.ts <= C.search_window then
      local had = credit_searches(searches, hitem, hts, w, nil)
      local credited = {}
      for _, term in ipairs(e.terms) do
        if not had[term] and not credited[term] then
          credited[term] = true
          ops[#ops + 1] = {'term', term, hitem, num(w * C.w_search)}
        end
      end
    end
  end
end

local function fold_event(e, ops)
  -- one event into its user's state; the item-side effects are appended to ops
  local u = e.user
  if e.type == 'erase' then
    for _, name in ipairs({'history', 'prefs', 'bought', 'searches', 'version', 'claims', 'outbox'}) do
      call('DEL', fmt(T[name], u))
    end
    call('SET', fmt(T.erased, u), fmt('%d', e.ts), 'EX', C.user_ttl)
    return
  end
  if e.type == 'search' then
    fold_search(e, ops)
    return
  end
  local w = C.w[e.type] or 0
  local item, tse = e.item, math.min(e.ts, WALL)
  local pk = fmt(T.prefs, u)
  if w <= 0 then
    -- negative feedback lowers the user's interest only; it is no co-occurrence and no popularity
    if w < 0 then zlog_sub(pk, item, mlog(-w) + tse * C.pref_rate) end
    touch(pk, C.user_ttl)
    return
  end
  zlog_add(pk, item, mlog(w) + tse * C.pref_rate)
  cap_lowest(pk, C.pref_max, 0)
  touch(pk, C.user_ttl)
  if e.type == 'purchase' then
    local bk = fmt(T.bought, u)
    call('ZADD', bk, e.ts, item)
    cap_lowest(bk, C.bought_max, 0)
    touch(bk, C.user_ttl)
  end
  local hk = fmt(T.history, u)
  local hist = call('LRANGE', hk, 0, -1)
  local at = place(hist, e.ts, history_ts)
  user_effects(e, w, tse, ops, hist, at)
  insert_at(hk, hist, at, fmt('%s|%d|%s', item, e.ts, e.type), C.history_max)
  touch(hk, C.user_ttl)
end

-- Fold events (already in partition/offset order) into their users' state. wm: the watermark hash;
-- wm_field: its field for this partition; outbox: keep each event's effects until the ack stage.
-- Calls on_applied(e, ops) for each applied event. Returns outcomes (by position) and the new watermark.
local function user_stage(events, wm, wm_field, outbox, on_applied)
  local mark = -1
  if wm and wm_field then mark = tonumber(call('HGET', wm, wm_field) or '-1') end
  local outcomes, newest = {}, mark
  local pruned, erased_memo, folded, order = {}, {}, {}, {}
  for n, e in ipairs(events) do
    local outcome
    local u = e.user
    local ek = fmt(T.claims, u)
    if e.o and e.o >= 0 and e.o <= mark then
      outcome = DUPLICATE
      if outbox then
        -- folded here by an earlier attempt whose later stages may not all have run (the outbox entry
        -- lives until the ack stage): its effects are emitted again and it counts as applied, so that
        -- the stats stage (which skips offsets it has counted) still counts it once
        local kept = call('HGET', fmt(T.outbox, u), e.p .. ':' .. e.o)
        if kept then
          outcome = APPLIED
          on_applied(e, cjson.decode(kept))
        end
      end
    else
      if e.o and e.o > newest then newest = e.o end
      if not pruned[ek] then
        pruned[ek] = true
        call('ZREMRANGEBYSCORE', ek, '-inf', '(' .. fmt('%d', WALL - C.dedupe_window))
      end
      if erased_memo[u] == nil then erased_memo[u] = tonumber(call('GET', fmt(T.erased, u)) or '-1') end
      if e.type ~= 'erase' and e.ts <= erased_memo[u] then
        outcome = ERASED
      elseif e.type ~= 'erase' and call('ZADD', ek, 'NX', WALL, e.id) == 0 then
        outcome = DUPLICATE  -- the same event_id within the dedupe window: a client's retry
      else
        local ops = {}
        local ok, err = pcall(fold_event, e, ops)
        if ok then
          outcome = APPLIED
          if e.type == 'erase' then
            erased_memo[u] = e.ts
            folded[u] = 0
          else
            touch(ek, C.dedupe_window_s)
            if folded[u] == nil then order[#order + 1] = u end
            folded[u] = (folded[u] or 0) + 1
          end
          if outbox then  -- every applied event, effects or none: its entry marks it applied until the ack
            local ok_key = fmt(T.outbox, u)
            call('HSET', ok_key, e.p .. ':' .. e.o, cjson.encode(ops))
            touch(ok_key, C.outbox_ttl)
          end
          on_applied(e, ops)
        else
          local msg = err_text(err)
          if is_transient(msg) then error(err) end
          if e.type ~= 'erase' then call('ZREM', ek, e.id) end  -- refused: a fixed replay may fold it
          outcome = 'state update failed: ' .. msg
        end
      end
    end
    outcomes[n] = outcome
  end
  -- each user's version moves once per call by the events folded: a reader compares it between trips
  for _, u in ipairs(order) do
    if folded[u] > 0 then
      local vk = fmt(T.version, u)
      call('HINCRBY', vk, 'n', folded[u])
      call('HSETNX', vk, 's', fmt('%d', WALL))  -- when this count started: (n, s) is never reused
      touch(vk, C.user_ttl)
    end
  end
  if wm and wm_field and newest > mark then call('HSET', wm, wm_field, newest) end
  return outcomes
end

-- ------------------------------------------------------------------------------- the item stage

local catalog_memo = {}
local function catalog_of(item)
  -- the item's deletion flag and category (a catalog record cannot change during an events call)
  local m = catalog_memo[item]
  if m == nil then
    local r = call('HMGET', fmt(T.catalog, item), 'deleted', 'category')
    m = {r[1] == '1', r[2] or ''}
    catalog_memo[item] = m
  end
  return m
end

local function is_deleted(item)
  return catalog_of(item)[1]
end

local card_memo = {}
local function count_of(item, now)
  -- an item's decayed occurrence count at now, or nil when it has no activity (expired, deleted)
  local n = call('HGET', fmt(T.activity, item), 'n')
  if not n then return nil end
  return mexp(tonumber(n) - now * C.cooc_rate)
end

local function trim_neighbours(key, counts, now)
  -- keep the neighbours with the best popularity-normalised score c / (n + shrink)^alpha, the order
  -- the API ranks them in (scoring.normalised_neighbours), not the merely popular ones; members with
  -- no activity left go first. counts: member -> log count (the activity
  -- hash's n), or nil to read them here (one Redis: every item is local).
  local card = card_memo[key] or call('ZCARD', key)
  if card <= C.nbr_max + C.nbr_slack then return false end
  local flat = call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local scored = {}
  for i = 1, #flat, 2 do
    local member, logc = flat[i], tonumber(flat[i + 1])
    local n
    if counts then
      n = counts[member]
      if n then n = mexp(tonumber(n) - now * C.cooc_rate) end
    else
      n = count_of(member, now)
    end
    local s = NEG
    if n then
      if n < 1 then n = 1 end
      s = logc - C.alpha * mlog(n + C.shrink)
    end
    scored[#scored + 1] = {member, s}
  end
  table.sort(scored, function(a, b)
    -- weakest first; on a tie the larger id goes first, as rank() prefers the smaller one
    if a[2] == b[2] then return a[1] > b[1] end
    return a[2] < b[2]
  end)
  local drop = {}
  for i = 1, #scored - C.nbr_max do drop[#drop + 1] = scored[i][1] end
  if #drop > 0 then call('ZREM', key, unpack(drop)) end
  card_memo[key] = #scored - #drop
  return true
end

-- Apply one effect. copies: receives {item, shard, pop, trend, category} to file in the shards;
-- overfull: receives neighbour keys past their bound when their members' counts are not local (cluster).
local function apply_op(op, copies, overfull)
  local kind = op[1]
  if kind == 'occ' then
    local item, shard, tse = op[2], op[3], op[7]
    local pop_x, trend_x, cnt_x = tonumber(op[4]), tonumber(op[5]), tonumber(op[6])
    if is_deleted(item) then return end
    local sk = fmt(T.activity, item)
    local cur = call('HMGET', sk, 'n', 'pop', 'trend', 'last')
    local n = lse(tonumber(cur[1]), cnt_x)
    local pop = lse(tonumber(cur[2]), pop_x)
    local trend = lse(tonumber(cur[3]), trend_x)
    local cat = catalog_of(item)[2]
    local last = math.max(tonumber(cur[4]) or tse, tse)  -- the latest occurrence, whatever the fold order
    call('HSET', sk, 'n', n, 'pop', pop, 'trend', trend, 'last', fmt('%d', last), 'cat', cat)
    call('HINCRBY', sk, 'c', 1)  -- plain occurrences, for audits (exactly-once checks) and capacity figures
    count_changed(item, n)
    touch(sk, C.item_ttl)
    touch(fmt(T.neighbours, item), C.item_ttl)
    copies[#copies + 1] = {item, shard, num(pop), num(trend), cat, tse}
  elseif kind == 'nb' then
    local anchor, member, x, tse = op[2], op[3], tonumber(op[4]), op[5]
    if is_deleted(anchor) then return end
    local nk = fmt(T.neighbours, anchor)
    local added = zlog_add(nk, member, x)
    changed(anchor)
    touch(nk, C.item_ttl)
    if card_memo[nk] == nil then card_memo[nk] = call('ZCARD', nk) else card_memo[nk] = card_memo[nk] + added end
    if card_memo[nk] > C.nbr_max + C.nbr_slack then
      if overfull then overfull[nk] = anchor else trim_neighbours(nk, nil, tse) end
    end
  elseif kind == 'term' then
    local term, item, x = op[2], op[3], tonumber(op[4])
    local tk = fmt(T.term, term)
    call('ZINCRBY', tk, x, item)
    cap_lowest(tk, C.term_max, 10)
    touch(tk, C.term_ttl)
  end
end

-- ------------------------------------------------------------------------------- the copies stage

local function file_copy(key, score, item, tse, rate)
  -- ZADD GT keeps the newest copy whatever order copies arrive in (totals only grow); members whose
  -- decayed value fell below C.forget are dropped, and the shard is capped
  if call('ZADD', key, 'GT', score, item) == 0 then return end
  -- a new member: the set grew, so drop what decayed below the floor, and cap it
  call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (tse * rate + C.forget_log))
  cap_lowest(key, C.shard_max, 100)
end

local function shard_keys(shard, scope)
  -- scope '' is the overall ranking, 'c:<category>' one category's
  if scope == '' then return fmt(T.popular, shard), fmt(T.trending, shard) end
  local cat = string.sub(scope, 3)
  return fmt(T.popular_cat, shard, cat), fmt(T.trending_cat, shard, cat)
end

local function apply_copy(c)
  -- c: {item, shard, pop, trend, scope, tse} files an item's totals; a 7th element 'rm' removes it
  local item, shard, scope = c[1], c[2], c[5]
  local pk, tk = shard_keys(shard, scope)
  if c[7] == 'rm' then
    call('ZREM', pk, item)
    call('ZREM', tk, item)
    return
  end
  file_copy(pk, tonumber(c[3]), item, c[6], C.pop_rate)
  file_copy(tk, tonumber(c[4]), item, c[6], C.trend_rate)
end

local function overall_and_category(copy, out)
  -- an item's totals go to the overall shards and to its category's shards
  local item, shard, pop, trend, cat, tse = copy[1], copy[2], copy[3], copy[4], copy[5], copy[6]
  out[#out + 1] = {item, shard, pop, trend, '', tse}
  if cat ~= '' then out[#out + 1] = {item, shard, pop, trend, 'c:' .. cat, tse} end
end

local function redo_followups(op, copies, overfull)
  -- the follow-ups of an effect this slot already applied: a copy of the item's current totals, a trim
  -- of a neighbour list still past its bound
  if op[1] == 'occ' then
    local item = op[2]
    if is_deleted(item) then return end
    local cur = call('HMGET', fmt(T.activity, item), 'pop', 'trend', 'cat')
    if cur[1] then overall_and_category({item, op[3], cur[1], cur[2], cur[3] or '', op[7]}, copies) end
  elseif op[1] == 'nb' then
    local nk = fmt(T.neighbours, op[2])
    if call('ZCARD', nk) > C.nbr_max + C.nbr_slack then overfull[nk] = op[2] end
  end
end

-- ------------------------------------------------------------------------------- the catalog stage

-- One catalog record (upsert or deletion). Returns the created-minus-deleted count change, and appends
-- the copy moves that follow a changed category or a deletion. A record older than the stored one (by
-- ts) loses; a stored ts from the future (another unit) never wins.
local function fold_record(r, moves)
  changed(r.id)
  local ck = fmt(T.catalog, r.id)
  local cur = call('HMGET', ck, 'ts', 'deleted', 'category')
  local cts = tonumber(cur[1])
  if cts and cts > WALL + C.max_skew then cts = nil end
  if cts and cts > r.ts then return 0, false end
  local existed = cur[1] ~= false and cur[2] ~= '1'
  local sk = fmt(T.activity, r.id)
  local act = call('HMGET', sk, 'pop', 'trend', 'cat')
  local has_activity = act[1] ~= false
  local oldcat = act[3] or ''
  local tse = math.min(r.ts, WALL)
  if r.deleted then
    call('DEL', ck)
    call('HSET', ck, 'deleted', '1', 'ts', fmt('%d', r.ts))
    call('EXPIRE', ck, C.item_ttl)
    call('DEL', sk, fmt(T.neighbours, r.id))
    if has_activity then
      moves[#moves + 1] = {r.id, r.s, 0, 0, '', tse, 'rm'}
      if oldcat ~= '' then moves[#moves + 1] = {r.id, r.s, 0, 0, 'c:' .. oldcat, tse, 'rm'} end
    end
    if existed then return -1, true end
    return 0, true
  end
  local args = {}
  for k, v in pairs(r.fields) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  call('DEL', ck)
  call('HSET', ck, unpack(args))
  local newcat = r.fields.category or ''
  if has_activity and newcat ~= oldcat then
    if oldcat ~= '' then moves[#moves + 1] = {r.id, r.s, 0, 0, 'c:' .. oldcat, tse, 'rm'} end
    if newcat ~= '' then
      moves[#moves + 1] = {r.id, r.s, act[1], act[2], 'c:' .. newcat, tse}
    end
    call('HSET', sk, 'cat', newcat)
  end
  if existed then return 0, true end
  return 1, true
end

-- ------------------------------------------------------------------------------- entry points

local function add_stats(key, counts)
  for field, n in pairs(counts) do
    if n ~= 0 then call('HINCRBY', key, field, n) end
  end
end

if MODE == 'all' then
  -- IN: {wall, p (partition, -1: none), events = [{id, type, user, item, terms, ts, o, s}]}
  guard(T.watermark)
  local counts = {}
  local wm_field = nil
  if IN.p >= 0 then wm_field = 'ev:' .. IN.p end
  local outcomes = user_stage(IN.events, T.watermark, wm_field, false, function(e, ops)
    for _, op in ipairs(ops) do
      local copies = {}
      apply_op(op, copies, nil)
      for _, c in ipairs(copies) do
        local filed = {}
        overall_and_category(c, filed)
        for _, f in ipairs(filed) do apply_copy(f) end
      end
    end
  end)
  for n, outcome in ipairs(outcomes) do
    -- only what changed the state is counted: a replay of folded events leaves the stats as they were
    if outcome == APPLIED then
      local field = 'applied:' .. IN.events[n].type
      counts[field] = (counts[field] or 0) + 1
    end
  end
  add_stats(fmt(T.stats, 'ev:' .. math.max(IN.p, 0)), counts)
  publish_changes()
  return cjson.encode(outcomes)

elseif MODE == 'catalog' then
  -- IN: {wall, p, records = [{id, ts, s, fields | deleted}]}
  guard(T.watermark)
  local delta, written = 0, 0
  for _, r in ipairs(IN.records) do
    local moves = {}
    local d, w = fold_record(r, moves)
    delta = delta + d
    if w then written = written + 1 end
    for _, m in ipairs(moves) do apply_copy(m) end
  end
  add_stats(fmt(T.stats, 'it:' .. math.max(IN.p, 0)), {items = delta})
  -- after the records: a reader that saw this generation reads them as written (cached answers compare it)
  if written > 0 then call('INCR', T.catalog_generation) end
  publish_changes()
  return written

elseif MODE == 'user' then
  -- IN: {wall, wm (this slot's watermark key), p, events}; returns {outcomes, effects}
  guard(IN.wm)
  local effects = {}
  local outcomes = user_stage(IN.events, IN.wm, 'u:' .. IN.p, true, function(e, ops)
    for _, op in ipairs(ops) do
      op[#op + 1] = e.o
      effects[#effects + 1] = op
    end
  end)
  return cjson.encode({outcomes, effects})

elseif MODE == 'item' then
  -- IN: {wm, p, ops (each ends with its event's offset, in offset order)}; returns {copies, overfull}
  guard(IN.wm)
  local mark = tonumber(call('HGET', IN.wm, 'i:' .. IN.p) or '-1')
  local newest = mark
  local copies, overfull = {}, {}
  for _, op in ipairs(IN.ops) do
    local o = op[#op]
    if o < 0 or o > mark then
      if o > newest then newest = o end
      local made = {}
      apply_op(op, made, overfull)
      for _, c in ipairs(made) do overall_and_category(c, copies) end
    else
      -- applied by an earlier attempt whose copies or trims may not have run: ask for them again
      -- (both are idempotent: ZADD GT of the current totals, a trim to the bound)
      redo_followups(op, copies, overfull)
    end
  end
  if newest > mark then call('HSET', IN.wm, 'i:' .. IN.p, newest) end
  local full = {}
  for key, anchor in pairs(overfull) do full[#full + 1] = {anchor, call('ZRANGE', key, 0, -1)} end
  table.sort(full, function(a, b) return a[1] < b[1] end)
  publish_changes()
  return cjson.encode({copies, full})

elseif MODE == 'copies' then
  -- IN: {copies}: idempotent (ZADD GT, ZREM), so no watermark is needed
  for _, c in ipairs(IN.copies) do apply_copy(c) end
  return #IN.copies

elseif MODE == 'trim' then
  -- IN: {now, lists = [[anchor, {member = log count}]]}
  local trimmed = 0
  for _, l in ipairs(IN.lists) do
    if trim_neighbours(fmt(T.neighbours, l[1]), l[2], IN.now) then
      trimmed = trimmed + 1
      changed(l[1])
    end
  end
  publish_changes()
  return trimmed

elseif MODE == 'ack' then
  -- IN: {entries = [[user, "<partition>:<offset>"], ...]}
  for _, entry in ipairs(IN.entries) do call('HDEL', fmt(T.outbox, entry[1]), entry[2]) end
  return #IN.entries

elseif MODE == 'stats' then
  -- IN: {key, p, o (the batch's last offset), counts, applied = [[offset, field, n (default 1)], ...]}:
  -- exactly once per (partition, offset). ``applied`` adds each entry whose offset is past the mark (or
  -- is -1: no offset), so a batch redelivered after a crash may straddle the one counted before;
  -- ``counts`` count once per batch.
  local field = 'wm:' .. IN.p
  local mark = tonumber(call('HGET', IN.key, field) or '-1')
  local counts = {}
  for _, a in ipairs(IN.applied or {}) do
    if a[1] < 0 or a[1] > mark then counts[a[2]] = (counts[a[2]] or 0) + (a[3] or 1) end
  end
  if not (IN.o >= 0 and IN.o <= mark) then
    for f, n in pairs(IN.counts or {}) do counts[f] = (counts[f] or 0) + n end
  end
  add_stats(IN.key, counts)
  if IN.o > mark then call('HSET', IN.key, field, IN.o) end
  return 1

elseif MODE == 'citem' then
  -- IN: {wall, wm, p, records (each with its offset o, -1: none)}: the records of one slot; returns
  -- {moves, counted = [[offset, 'items', delta], ...]}. Exactly once per (slot, partition, offset): a
  -- record at or below the slot's catalog watermark ``c:<p>`` was folded by an earlier attempt, which kept
  -- its count change and copy moves in the slot's outbox field ``co:<p>:<o>`` until the copies and stats
  -- that follow ran (``cack``); they are handed out again, and the record is not folded again.
  guard(IN.wm)
  local mark = tonumber(call('HGET', IN.wm, 'c:' .. IN.p) or '-1')
  local newest = mark
  local moves, counted = {}, {}
  for _, r in ipairs(IN.records) do
    local o = r.o or -1
    if o >= 0 and o <= mark then
      local kept = call('HGET', IN.wm, 'co:' .. IN.p .. ':' .. o)
      if kept then
        local k = cjson.decode(kept)
        counted[#counted + 1] = {o, 'items', k[1]}
        for _, m in ipairs(k[2]) do moves[#moves + 1] = m end
      end
    else
      local mine = {}
      local d = fold_record(r, mine)
      for _, m in ipairs(mine) do moves[#moves + 1] = m end
      counted[#counted + 1] = {o, 'items', d}
      if o >= 0 then
        if o > newest then newest = o end
        if d ~= 0 or #mine > 0 then
          call('HSET', IN.wm, 'co:' .. IN.p .. ':' .. o, cjson.encode({d, mine}))
        end
      end
    end
  end
  if newest > mark then call('HSET', IN.wm, 'c:' .. IN.p, newest) end
  publish_changes()
  return cjson.encode({moves, counted})

elseif MODE == 'cack' then
  -- IN: {wm, fields}: drop the catalog stage's outbox fields of one slot once its copies and stats ran
  if #IN.fields > 0 then call('HDEL', IN.wm, unpack(IN.fields)) end
  return #IN.fields
end
error('unknown fold mode ' .. tostring(MODE))
