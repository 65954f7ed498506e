-- store_redis.lua - apply decay and points to counters in one atomic step.
--
-- Called by store_redis.c with EVALSHA (EVAL after NOSCRIPT):
--   KEYS[i]       a counter key, prefix included
--   ARGV[1]       now in seconds since the epoch as a decimal string, or ""
--                 to take Redis's own clock (TIME), so that every smtpguard
--                 host sharing this Redis decays on one time base
--   ARGV[3i-1]    KEYS[i]'s decay kind: "h" half-life, "l" leaky bucket
--   ARGV[3i]      its parameter: half-life in seconds, or points/second
--   ARGV[3i+1]    points to add; 0 only reads
--                 The same key may come more than once (the updates of
--                 several requests in one call): the updates are applied
--                 in order, each seeing the ones before it, and the
--                 score after each is returned at its position.
--   ARGV[3n+2..4] optional, the top set: the store prefix, the floor and
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
-- An update returns {now, score1, score2, ...}, each number as 8 bytes:
-- an IEEE-754 double, little-endian (a Lua number handed back to Redis
-- would be truncated to an integer, and %.17g text costs a formatting
-- here and a strtod in smtpguard per number).
--
-- A key holds 17 bytes: the byte 1 (the format), then the score and the
-- time it was at, as two such doubles: both survive bit for bit. Written
-- as text ("%.17g %.17g"), the pair cost Redis's one thread a sixth of
-- the script's time in formatting and parsing (docs/performance.md). A
-- key holding the text pair "SCORE TIME" that versions before 2026-12
-- wrote is still read, and is rewritten in the new form at its next
-- update. Those versions read the new form as damaged and start such a
-- counter over (README, "Upgrading").
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
local LN2 = math.log(2)
-- Locals, not globals: every global is a table lookup, per use.
local tonumber, fmtstr, smatch, ssub, sfind = tonumber, string.format, string.match, string.sub,
    string.find
local floor, ceil, abs, frexp, log = math.floor, math.ceil, math.abs, math.frexp, math.log
local rcall = redis.call
local spack, sunpack, sbyte = struct.pack, struct.unpack, string.byte

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

-- parse_pair - a stored pair (binary, or the older "SCORE TIME"), or nil.
local function parse_pair(v)
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
if now and #ARGV == 4 + 3 * #KEYS then
    top_prefix = ARGV[2 + 3 * #KEYS]
    top_floor = tonumber(ARGV[3 + 3 * #KEYS])
    top_size = tonumber(ARGV[4 + 3 * #KEYS])
    if not top_floor or not top_size then
        return redis.error_reply('ERR smtpguard script: bad top set arguments')
    end
elseif not now or #ARGV ~= 1 + 3 * #KEYS then
    return redis.error_reply('ERR smtpguard script: bad arguments')
end

local out = {spack('<d', now)}
-- One MGET for every key rather than a GET each: a redis.call() costs
-- about as much as the arithmetic of a whole key.
local olds = {}
if #KEYS > 0 then
    olds = rcall('MGET', unpack(KEYS))
end
-- A call may carry several requests (store_redis.c batches the requests
-- of one loop turn), so a key may come more than once: each update sees
-- the one before it, exactly as if every request had been its own call
-- at the same instant (one TIME for the whole call).
-- cur[key] is a key's value as this call left it ({score} at now, or
-- false once deleted); its write (SET or DEL) goes out once, at the end,
-- in the order the keys were first changed.
local cur, last, order = {}, {}, {}
-- The top set, per sorted set: the latest score of each member this call
-- put there, and the longest expiry among them. One ZADD, at most one
-- ZCARD and one trim, and one PTTL per sorted set and call.
local tops, top_order, znames = {}, {}, {}
local plen = top_prefix and #top_prefix
for i = 1, #KEYS do
    local key = KEYS[i]
    local kind, param, points = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
    local peek = kind == 'H' or kind == 'L'
    if peek then
        kind = string.lower(kind)
        points = 0
    end
    if not param or not points or (kind ~= 'h' and kind ~= 'l') then
        return redis.error_reply('ERR smtpguard script: bad arguments for ' .. key)
    end
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
            s, t = parse_pair(old)
        end
    end
    local score = 0
    if exists then
        if s then
            score = decay(kind, param, s, now - t, points)
        else
            -- Not ours or damaged: start over rather than fail forever.
            score = decay(kind, param, 0, 0, points)
        end
    elseif points ~= 0 then
        score = decay(kind, param, 0, 0, points)
    end
    if points ~= 0 then
        -- At least a second, also for a score at or below the floor
        -- (negative points), so the key does not vanish before it is read.
        local ms = ttl(kind, param, score) * 1000
        if ms < 1000 then
            ms = 1000
        elseif ms > 1e15 then
            ms = 1e15
        end
        if last[key] == nil then
            order[#order + 1] = key
        end
        cur[key] = score
        last[key] = {score, ms}
        if top_prefix and top_size > 0 and score >= top_floor then
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
                    tz = {members = {}, ms = 0}
                    tops[z] = tz
                    top_order[#top_order + 1] = z
                end
                tz.members[key] = score
                if ms > tz.ms then
                    tz.ms = ms
                end
            end
        end
    elseif exists and not peek and ttl(kind, param, score) == 0 then
        if last[key] == nil then
            order[#order + 1] = key
        end
        cur[key] = false
        last[key] = false
    end
    out[i + 1] = spack('<d', score)
end
for _, key in ipairs(order) do
    local w = last[key]
    if w then
        rcall('SET', key, spack('<Bdd', 1, w[1], now), 'PX', fmtstr('%d', w[2]))
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
    -- grown past its bound.
    if rcall('ZADD', z, unpack(args)) > 0 and rcall('ZCARD', z) > top_size + TOP_SLACK then
        rcall('ZREMRANGEBYRANK', z, 0, -(top_size + 1))
    end
    if rcall('PTTL', z) < tz.ms then
        rcall('PEXPIRE', z, fmtstr('%d', tz.ms))
    end
end
return out
