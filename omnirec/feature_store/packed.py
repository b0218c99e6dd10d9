"""Packed values: a member profile or an item list stored as one Redis string, and the scripts that edit them.

Why packed: Redis spends about 0.3 us per hash field and per list element on a write, so a 25-field
profile hash plus two lists cost about 20 us of server time per member and capped a materialisation near
50,000 members/s. One `SET` of a packed string costs about 1.5 us whatever its length, and a read is one
`GET` (see `feature_store/FORMAT.md`).

A record's fields, and a list's ids, are joined by the ASCII unit separator (0x1f); ids never contain
control characters (`domain.schema` rejects them on input). Live edits run as Lua scripts inside Redis,
so a read-modify-write of one key is atomic (counters never lose an increment to a concurrent batch) and
keeps the key's TTL (`KEEPTTL`) unless a new one is given: an old generation's grace TTL is never lost.
"""

from __future__ import annotations

SEP = "\x1f"


def unpack(raw: bytes | None) -> list[str]:
    """Fields of a packed record, or ids of a packed list ([] for a missing key or an empty list)."""
    return raw.decode().split(SEP) if raw else []


def unpack_timed(raw: bytes | None) -> dict[str, int]:
    """A packed timed list (id, unix seconds, id, unix seconds, ...) as id -> seconds, in stored order.

    ValueError when the values do not pair up into ids and whole seconds."""
    values = unpack(raw)
    if len(values) % 2:
        raise ValueError(f"{len(values)} values do not pair up into (id, time)")
    return dict(zip(values[0::2], map(int, values[1::2]), strict=True))


LIBRARY = """
local function store(key, value, ttl)
  if ttl == '0' then redis.call('SET', key, value, 'KEEPTTL') else redis.call('SET', key, value, 'EX', ttl) end
end

local function split(raw)
  local fields = {}
  for v in string.gmatch(raw .. '\\31', '([^\\31]*)\\31') do fields[#fields + 1] = v end
  return fields
end

-- A packed record's fields, or an error reply when it does not have `count` of them.
local function record_fields(key, raw, count)
  local fields = split(raw)
  if #fields ~= tonumber(count) then
    return nil, redis.error_reply('malformed packed record ' .. key .. ': ' .. #fields .. ' fields, expected ' .. count)
  end
  return fields
end

-- args: field count, ttl (0 keeps it), n, then n (position, value) pairs to set, then (position, integer
-- delta) pairs to add. Positions are 1-based. A missing record stays missing.
local function patch_record(key, args)
  local raw = redis.call('GET', key)
  if not raw then return 0 end
  local fields, err = record_fields(key, raw, args[1])
  if not fields then return err end
  local n = tonumber(args[3])
  for i = 4, 3 + 2 * n, 2 do fields[tonumber(args[i])] = args[i + 1] end
  for i = 4 + 2 * n, #args, 2 do
    local pos = tonumber(args[i])
    local current = tonumber(fields[pos])
    if not current then
      return redis.error_reply('malformed packed record ' .. key .. ': field ' .. pos .. ' is not a number')
    end
    fields[pos] = string.format('%d', current + tonumber(args[i + 1]))
  end
  store(key, table.concat(fields, '\\31'), args[2])
  return 1
end

-- args: limit, ttl (0 keeps it), then ids oldest first. The ids become the newest entries of a packed,
-- newest-first list; older copies of them are dropped; the list keeps `limit` ids.
local function push_distinct(key, args)
  local limit = tonumber(args[1])
  local out, seen = {}, {}
  local function add(id)
    if #out < limit and not seen[id] then seen[id] = true; out[#out + 1] = id end
  end
  for i = #args, 3, -1 do add(args[i]) end
  local raw = redis.call('GET', key)
  if raw then
    for id in string.gmatch(raw, '[^\\31]+') do add(id) end
  end
  store(key, table.concat(out, '\\31'), args[2])
  return #out
end

-- args: limit, ttl (0 keeps it), then (id, unix seconds) pairs. A packed timed list (id, seconds, id,
-- seconds, ...) keeps each id once with its latest time, newest first (ties: the pushed id first, then
-- the stored order), at most `limit` ids.
local function push_timed(key, args)
  local at, order = {}, {}
  local function add(id, ts)
    local t = tonumber(ts)
    if at[id] == nil then order[#order + 1] = id; at[id] = t elseif t > at[id] then at[id] = t end
  end
  for i = #args - 1, 3, -2 do add(args[i], args[i + 1]) end
  local raw = redis.call('GET', key)
  if raw and raw ~= '' then
    local stored = split(raw)
    for i = 1, #stored - 1, 2 do add(stored[i], stored[i + 1]) end
  end
  local rank = {}
  for i, id in ipairs(order) do rank[id] = i end
  table.sort(order, function(a, b) if at[a] ~= at[b] then return at[a] > at[b] end return rank[a] < rank[b] end)
  local out = {}
  for i = 1, math.min(#order, tonumber(args[1])) do
    out[#out + 1] = order[i]; out[#out + 1] = string.format('%d', at[order[i]])
  end
  store(key, table.concat(out, '\\31'), args[2])
  return #order
end
"""
"""Lua functions `feature_store.live`'s batch script is built from: `patch_record` sets fields of a packed
record and adds to others (HSET + HINCRBY for a packed value); `push_distinct` is LREM + LPUSH + LTRIM for a
packed list; `push_timed` is ZADD GT + ZREMRANGEBYRANK for a packed timed list (the purchased list)."""
