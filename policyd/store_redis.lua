-- store_redis.lua - apply decay and points to counters in one atomic step.
--
-- Called by store_redis.c with EVALSHA (EVAL after NOSCRIPT):
--   KEYS[i]       a counter key, prefix included
--   ARGV[1]       now in seconds since the epoch as a decimal string, or ""
--                 to take Redis's own clock (TIME), so that every smtpguard
--                 host sharing this Redis decays on one time base
--   ARGV[i+1]     KEYS[i]'s update, "KIND PARAM POINTS": the decay kind
--                 ("h" half-life, "l" leaky bucket), its parameter
--                 (half-life in seconds, or points/second) and the points
--                 to add (0 only reads), e.g. "h 600 1". One argument, not
--                 three: Redis pays for every argument it reads and hands
--                 to Lua, and a call's updates are a few distinct strings,
--                 each parsed once.
--                 The same key may come more than once (the updates of
--                 several requests in one call): the updates are applied
--                 in order, each seeing the ones before it, and the
--                 score after each is returned at its position.
--   ARGV[n+2..4]  optional, the top set: the store prefix, the floor and
--                 the size. An update that leaves a key at or above the
--                 floor adds it to the sorted set PREFIX.."@top:"..COUNTER
--                 (COUNTER: the key's name part; '@' is never in a counter
--                 name, so no counter key collides), trimmed to the size
--                 highest once it holds more than size + TOP_SLACK, and
--                 expiring with its longest-lived member.
-- A kind written in capitals ("H", "L") is a peek: the score is read and
-- nothing at all is written or deleted (explain, the admin API).
--
-- Top query: ARGV[1] == "top", KEYS[1] the sorted set, ARGV[2] the decay
-- kind, ARGV[3] its parameter, ARGV[4] how many, ARGV[5] the floor. The
-- members are decayed to now; members whose key is gone or has decayed
-- (or been reset) below the floor leave the set: an update above the
-- floor brings them back.
-- Returns {now, key1, score1, key2, score2, ...}, highest score first,
-- the numbers as %.17g strings.
-- An update returns ONE string: now, score1, score2, ..., each number as
-- 8 bytes, an IEEE-754 double, little-endian (a Lua number handed back to
-- Redis would be truncated to an integer, and %.17g text costs a
-- formatting here and a strtod in smtpguard per number). One string, not
-- an array of them: a string per key cost a pack here, a reply element in
-- Redis and a parsed element in smtpguard (docs/performance.md).
--
-- A key holds 25 bytes: the byte 2 (the format), then the score, the
-- time it was at and a time before which Redis will not expire the key
-- (see EXPIRY_SLACK), as three such doubles: all survive bit for bit.
-- Written as text ("%.17g %.17g"), the pair cost Redis's one thread a
-- sixth of the script's time in formatting and parsing
-- (docs/performance.md). Keys in the older forms are still read: the
-- 17-byte form (the byte 1, score and time) and the text pair "SCORE
-- TIME"; either is rewritten in the new form at its next update.
-- Versions that knew only those forms read the new one as damaged and
-- start such a counter over (README, "Upgrading").
--
-- The arithmetic mirrors policyd/decay.c line for line (2^x is pow(2, x)
-- in Redis's Lua 5.1, as in C), because the memory store and this script
-- must give the same numbers; test/vectors/decay.tsv checks both.
--
-- A read (points == 0) writes nothing: decay composes (the score at t2
-- computed from t0 equals the one computed from t1 computed from t0), so
-- the stored pair and its expiry stay right, and a read costs no write,
-- no replication and no AOF traffic. A read that finds a score decayed to
-- the floor deletes the key; a read of a missing key creates nothing.

local FLOOR = 0.001 -- DECAY_FLOOR in decay.h
-- A top set is trimmed to its size only once it holds TOP_SLACK members
-- more. Redis keeps a sorted set of up to 128 members (its default
-- zset-max-listpack-entries) as one packed list, whose every ZADD scans
-- and moves the whole list; past 128 it becomes a skip list, and stays
-- one when trimmed. A set held at exactly 100 (the default size) stayed
-- packed forever: each ZADD took 5 us of Redis's one thread, 2.5 us on
-- the skip list (docs/performance.md). The slack also spares a trim per
-- call once the set is full. The top query ranks every member anyway.
local TOP_SLACK = 128
-- A key already in the top set (its score before this update was at or
-- above the floor) is written there again only when its score has
-- climbed past a power of two since, or when the update is the key's
-- first in a new TOP_REFRESH-second window. The set's own scores only
-- decide who is trimmed (a query reads each member's key), so they may
-- lag a little; a ZADD for every update of every hot key cost a tenth of
-- Redis's instructions, and more of its time (docs/performance.md). The
-- window brings back a member trimmed while above the floor. A member
-- whose own expiry is renewed carries the set's expiry with it (a PTTL
-- of the set, no ZADD): a member that lives less than a window would
-- otherwise outlive its set.
local TOP_REFRESH = 10
-- A key updated again gets an expiry EXPIRY_SLACK times what its score
-- needs, and keeps it (SET ... KEEPTTL) for as long as that is enough:
-- the PX of a SET (its number formatted here and parsed by Redis, the
-- expires table updated) was half of a SET's cost, and a busy key
-- outgrows an eighth more of its lifetime only every few updates. A key
-- written once gets exactly what it needs, so the many keys of one-off
-- clients do not linger. The expiry a key was given is stored in it
-- (the third double), so no PTTL is needed to know it.
local EXPIRY_SLACK = 1.125
local LN2 = math.log(2)
-- Locals, not globals: every global is a table lookup, per use.
local tonumber, fmtstr, smatch, ssub, sfind = tonumber, string.format, string.match, string.sub,
    string.find
local floor, ceil, abs, frexp, log = math.floor, math.ceil, math.abs, math.frexp, math.log
local rcall = redis.call
local spack, sunpack, sbyte, srep = struct.pack, struct.unpack, string.byte, string.rep

local function fmt(x)
    return fmtstr('%.17g', x)
end

-- decay_apply in decay.c.
local function decay(kind, param, score, dt, points)
    if not (dt > 0) then
        dt = 0
    end
    if kind == 'h' then
        return score * 2 ^ (-dt / param) + points
    end
    local left = score - param * dt
    if not (left > 0) then
        left = 0
    end
    return left + points
end

-- Lua 5.1 has no log2. frexp splits off the exponent exactly, so powers
-- of two come out exact (log(0.5) / log(2) is exactly -1) and the rest is
-- within an ulp or two of C's log2().
local function log2(x)
    local m, e = frexp(x)
    return e + log(m) / LN2
end

-- decay_ttl in decay.c: whole seconds until the score reaches FLOOR.
local function ttl(kind, param, score)
    if kind == 'h' then
        score = abs(score)
    end
    if not (score > FLOOR) then
        return 0
    end
    if kind == 'h' then
        return ceil(param * log2(score / FLOOR))
    end
    return ceil((score - FLOOR) / param)
end

local now
if ARGV[1] == '' or ARGV[1] == 'top' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1e6
else
    now = tonumber(ARGV[1])
end

-- parse_pair - a stored value's score, time and known expiry (nil for
-- the forms that hold none), or nil.
local function parse_pair(v)
    if #v == 25 and sbyte(v, 1) == 2 then
        local _, s, t, e = sunpack('<Bddd', v)
        return s, t, e
    end
    if #v == 17 and sbyte(v, 1) == 1 then
        local _, s, t = sunpack('<Bdd', v)
        return s, t
    end
    local s, t = smatch(v, '^(%S+) (%S+)$')
    s, t = tonumber(s), tonumber(t)
    if s and t then
        return s, t
    end
    return nil
end

if ARGV[1] == 'top' then
    local kind, param, want, floor = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
    if #KEYS ~= 1 or not param or not want or not floor or (kind ~= 'h' and kind ~= 'l') then
        return redis.error_reply('ERR smtpguard script: bad top arguments')
    end
    local found = {}
    for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
        local v = redis.call('GET', m)
        local s, t
        if v then
            s, t = parse_pair(v)
        end
        local score = s and decay(kind, param, s, now - t, 0)
        if score and ttl(kind, param, score) > 0 and score >= floor then
            found[#found + 1] = {m, score}
        else
            redis.call('ZREM', KEYS[1], m)
        end
    end
    table.sort(found, function(a, b)
        if a[2] ~= b[2] then
            return a[2] > b[2]
        end
        return a[1] < b[1]
    end)
    local out = {fmt(now)}
    for i = 1, math.min(want, #found) do
        out[#out + 1] = found[i][1]
        out[#out + 1] = fmt(found[i][2])
    end
    return out
end

local top_prefix, top_floor, top_size
if now and #ARGV == 4 + #KEYS then
    top_prefix = ARGV[2 + #KEYS]
    top_floor = tonumber(ARGV[3 + #KEYS])
    top_size = tonumber(ARGV[4 + #KEYS])
    if not top_floor or not top_size then
        return redis.error_reply('ERR smtpguard script: bad top set arguments')
    end
    if top_size <= 0 then
        top_prefix = nil
    end
elseif not now or #ARGV ~= 1 + #KEYS then
    return redis.error_reply('ERR smtpguard script: bad arguments')
end

-- One MGET for every key rather than a GET each: a redis.call() costs
-- about as much as the arithmetic of a whole key.
local olds = {}
if #KEYS > 0 then
    olds = rcall('MGET', unpack(KEYS))
end
-- The answer, made at its full length (its values are overwritten): a
-- table grown one element at a time is reallocated and copied at every
-- power of two.
local out = {now, unpack(olds)}
-- A call may carry several requests (store_redis.c batches the requests
-- of one loop turn), so a key may come more than once: each update sees
-- the one before it, exactly as if every request had been its own call
-- at the same instant (one TIME for the whole call).
-- cur[key] is a key's score as this call left it (at now), or false once
-- deleted; its write (SET with the expiry in wms[key], or DEL when
-- wms[key] is false) goes out once, at the end, in the order the keys
-- were first changed.
local cur, wms, order = {}, {}, {}
-- kexp[key]: a time before which Redis will not expire key, as the key
-- stands (read from it, or set by this call), or nil when unknown.
local kexp = {}
-- specs[ARGV] = {kind, param, points, peek}: each distinct update string
-- of the call parsed once (tonumber of "0.83333333333333337" is a strtod).
local specs = {}
-- Members already in a top set are written there again from the first
-- update of each TOP_REFRESH window on (see TOP_REFRESH).
local window_start = floor(now / TOP_REFRESH) * TOP_REFRESH
-- The top set, per sorted set: the latest score of each member this call
-- put there, and the longest expiry among them. One ZADD, at most one
-- ZCARD and one trim, and one PTTL per sorted set and call.
local tops, top_order, znames = {}, {}, {}
local plen = top_prefix and #top_prefix
for i = 1, #KEYS do
    local key = KEYS[i]
    local arg = ARGV[i + 1]
    local sp = specs[arg]
    if not sp then
        local k, ps, pts = smatch(arg, '^([hlHL]) (%S+) (%S+)$')
        local param, points = k and tonumber(ps), k and tonumber(pts)
        if not param or not points then
            return redis.error_reply('ERR smtpguard script: bad arguments for ' .. key)
        end
        local peek = k == 'H' or k == 'L'
        if peek then
            points = 0
        end
        sp = {string.lower(k), param, points, peek}
        specs[arg] = sp
    end
    local kind, param, points, peek = sp[1], sp[2], sp[3], sp[4]
    local c = cur[key]
    local s, t, exists
    if c ~= nil then
        exists = c ~= false
        if exists then
            s, t = c, now
        end
    else
        local old = olds[i]
        exists = old ~= false and old ~= nil
        if exists then
            -- parse_pair, its usual case inline (a Lua call per key shows).
            if #old == 25 and sbyte(old, 1) == 2 then
                local e
                s, t, e = sunpack('<ddd', old, 2)
                kexp[key] = e
            else
                s, t = parse_pair(old)
            end
        end
    end
    -- before: the score decayed to now, before these points (0 for a
    -- key that is missing, or not ours or damaged: it starts over rather
    -- than fail forever); decay() with no points, inline. X + 0 + points
    -- is X + points bit for bit, so score is decay_apply's exactly.
    local before, score = 0, 0
    if exists and s then
        local dt = now - t
        if not (dt > 0) then
            dt = 0
        end
        if kind == 'h' then
            before = s * 2 ^ (-dt / param)
        else
            before = s - param * dt
            if not (before > 0) then
                before = 0
            end
        end
    end
    if exists or points ~= 0 then
        score = before + points
    end
    if points ~= 0 then
        if wms[key] == nil then
            order[#order + 1] = key
        end
        -- The key's expiry: kept (KEEPTTL, wms 0) while the score
        -- reaches the floor by then (ttl()'s test without its log, and
        -- at least a second left), else set anew (PX, wms the ms), with
        -- EXPIRY_SLACK over what the score needs when the key is being
        -- updated again.
        local e = kexp[key]
        local keep = false
        if e then
            local left = e - now
            if left >= 1 then
                if kind == 'h' then
                    keep = abs(score) <= FLOOR * 2 ^ (left / param)
                else
                    keep = score - FLOOR <= param * left
                end
            end
        end
        if not keep then
            -- At least a second, also for a score at or below the floor
            -- (negative points), so the key does not vanish before it
            -- is read.
            local secs = ttl(kind, param, score)
            if secs < 1 then
                secs = 1
            end
            if exists then
                secs = ceil(secs * EXPIRY_SLACK)
            end
            local ms = secs * 1000
            if ms > 1e15 then
                ms = 1e15
            end
            -- Redis counts the PX from its own clock a little after now:
            -- e, a second early, is a time it will not expire before.
            e = now + ms / 1000 - 1
            kexp[key] = e
            wms[key] = ms
        elseif not wms[key] then
            wms[key] = 0
        end
        cur[key] = score
        local enter = top_prefix and score >= top_floor
        -- stay: in the set already, and its expiry was just renewed: the
        -- set's own expiry must follow (a member that lives less than
        -- TOP_REFRESH would otherwise outlive the set within a window),
        -- without a ZADD.
        local stay = false
        if enter and before >= top_floor and t >= window_start then
            -- Already in the set this window: only a new power of two.
            local _, eb = frexp(before)
            local _, es = frexp(score)
            enter = es > eb
            stay = not enter and not keep
        end
        if enter or stay then
            -- The sorted set of the key's counter: "PREFIX@top:COUNTER"
            -- for "PREFIX" "COUNTER" ":" "...".
            local colon = sfind(key, ':', plen + 1, true)
            if colon and colon > plen + 1 then
                local counter = ssub(key, plen + 1, colon - 1)
                local z = znames[counter]
                if not z then
                    z = top_prefix .. '@top:' .. counter
                    znames[counter] = z
                end
                local tz = tops[z]
                if not tz then
                    tz = {members = {}, n = 0, ms = 0}
                    tops[z] = tz
                    top_order[#top_order + 1] = z
                end
                if enter then
                    tz.members[key] = score
                    tz.n = tz.n + 1
                end
                local ms = ceil((e + 1 - now) * 1000)
                if ms > tz.ms then
                    tz.ms = ms
                end
            end
        end
    elseif exists and not peek and ttl(kind, param, score) == 0 then
        if wms[key] == nil then
            order[#order + 1] = key
        end
        cur[key] = false
        wms[key] = false
        kexp[key] = nil
    end
    out[i + 1] = score
end
for _, key in ipairs(order) do
    local ms = wms[key]
    if ms then
        local v = spack('<Bddd', 2, cur[key], now, kexp[key])
        if ms > 0 then
            -- ms as a number: Redis writes it as %.17g, whole up to 1e15.
            rcall('SET', key, v, 'PX', ms)
        else
            rcall('SET', key, v, 'KEEPTTL')
        end
    else
        rcall('DEL', key)
    end
end
for _, z in ipairs(top_order) do
    local tz = tops[z]
    -- Members are ranked by their whole points: the set only decides who
    -- is kept (a top query reads each member's own key for its score),
    -- and Redis keeps a small sorted set as a packed list whose every
    -- comparison parses the scores back: "12" parses in a fraction of the
    -- time of "12.374829734104612" (ZADD of 8 members: 19 -> 8 us).
    local args = {}
    for key, score in pairs(tz.members) do
        args[#args + 1] = fmtstr('%.0f', floor(score))
        args[#args + 1] = key
    end
    -- ZADD answers how many members are new: only then can the set have
    -- grown past its bound. (No members: only expiries were renewed.)
    if tz.n > 0 then
        local added = redis.pcall('ZADD', z, unpack(args))
        if type(added) == 'table' and added.err then
            -- Not a sorted set (damaged, or written by hand): it starts
            -- over, as a damaged counter key does, rather than fail every
            -- call that carries a member of it (the counts above are
            -- written already).
            rcall('DEL', z)
            added = rcall('ZADD', z, unpack(args))
        end
        if added > 0 and rcall('ZCARD', z) > top_size + TOP_SLACK then
            rcall('ZREMRANGEBYRANK', z, 0, -(top_size + 1))
        end
    end
    if rcall('PTTL', z) < tz.ms then
        rcall('PEXPIRE', z, tz.ms)
    end
end
return spack('<' .. srep('d', #out), unpack(out))
