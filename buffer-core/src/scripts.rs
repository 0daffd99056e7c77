//! The Lua scripts. Each is atomic on the server and touches keys of one slot only.
//!
//! Scripts are used where a step must be conditional *and* atomic (MULTI cannot branch):
//! preparing a batch only when the store has records, and releasing, extending or emptying
//! under a lock only when the caller's token still holds it.
//!
//! The persister's scripts (lock, prepare, extend, release, empty) carry the `allow-oom` flag:
//! when Redis is out of memory, draining is what frees it, so the drain must not be refused.
//! They allocate only a lock value and an index entry. The push scripts (`PUSH_ONCE`,
//! `PUSH_LIMITED`) have no such flag: pushes are refused when Redis is out of memory.

use std::sync::LazyLock;

use redis::Script;

/// Moves a live store to a batch: a fixed number of RENAMEs (at most seven), whatever the
/// number of records or, for a coalescing store, of entities.
///
/// Keys: 1-7 live records/first/keys/bytes/runs/entities/rows, 8-14 the same for the batch,
/// 15 stores index, 16 bytes index, 17 count index, 18 prepared index, 19 store lock, 20 batch
/// lock, 21 the group's paused hash. ARGV: 1 encoded name, 2 prepared-index member, 3 batch
/// ms, 4 lock value or "", 5 the batch lock's TTL in ms (used when ARGV 4 is a lock value).
///
/// Returns `{0}` when the store has no records and no entities, `{-3}` when the store is
/// paused (checked here, in the step that moves records, so a store paused after a persister
/// selected it is still not prepared), `{-1}` when the lock value does not match, `{-2}` when
/// the batch id is taken, else `{1, records + entities, bytes, keys, first}`. Every type is checked before the first write, so a WRONGTYPE error leaves
/// the store untouched.
///
/// The batch lock gets the caller's full TTL, never a copy of the store lock's `PTTL`: that is
/// 0 or -1 for a key in its last millisecond or one without expiry, and a lock written without
/// `PX` would never expire, leaving the batch stuck for good if its holder died.
pub(crate) static PREPARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
local function kind(key) return redis.call('TYPE', key)['ok'] end
if kind(KEYS[1]) == 'none' and kind(KEYS[6]) == 'none' then
  redis.call('ZREM', KEYS[15], ARGV[1])
  redis.call('ZREM', KEYS[16], ARGV[1])
  redis.call('ZREM', KEYS[17], ARGV[1])
  return {0}
end
local expected = {'list', 'string', 'set', 'string', 'list', 'list', 'hash'}
for i = 1, 7 do
  local k = kind(KEYS[i])
  if k ~= 'none' and k ~= expected[i] then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. k .. ', expected a ' .. expected[i])
  end
end
if redis.call('HEXISTS', KEYS[21], ARGV[1]) == 1 then
  return {-3}
end
local lock_ttl = tonumber(ARGV[5])
if ARGV[4] ~= '' and (lock_ttl == nil or lock_ttl < 1) then
  return redis.error_reply('ERR the batch lock TTL must be at least 1 ms, got ' .. tostring(ARGV[5]))
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[19]) ~= ARGV[4] then
  return {-1}
end
if redis.call('EXISTS', KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]) > 0 then
  return {-2}
end
-- The writes Redis may refuse when out of memory (SET, ZADD) come first, so a refusal
-- leaves the live store untouched; RENAME, ZREM and DEL are never refused.
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[20], ARGV[4], 'PX', lock_ttl)
end
redis.call('ZADD', KEYS[18], ARGV[3], ARGV[2])
for i = 1, 7 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 7])
  end
end
redis.call('ZREM', KEYS[15], ARGV[1])
redis.call('ZREM', KEYS[16], ARGV[1])
redis.call('ZREM', KEYS[17], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[19])
end
return {1, redis.call('LLEN', KEYS[8]) + redis.call('LLEN', KEYS[13]),
        tonumber(redis.call('GET', KEYS[11]) or '0'),
        redis.call('SCARD', KEYS[10]), tonumber(redis.call('GET', KEYS[9]) or '0')}
"#,
    )
});

/// Takes a lock: `SET NX PX`. Keys: 1 lock. ARGV: 1 value, 2 ttl ms. Returns OK or nil.
pub(crate) static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"#,
    )
});

/// Deletes a key when it holds the given value. Keys: 1 lock. ARGV: 1 value. Returns 1 or 0.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Sets a new TTL on a key when it holds the given value.
/// Keys: 1 lock. ARGV: 1 value, 2 ttl ms. Returns 1 or 0.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Empties a batch and releases its lock, only while the lock holds the given value.
///
/// Uses only UNLINK, ZREM and DEL, which Redis accepts when it is out of memory.
/// Keys: 1 lock, 2 prepared index, 3.. every batch data key (however many the layout has).
/// ARGV: 1 value, 2 prepared member. Returns 1, or 0 when the lock is not held.
pub(crate) static EMPTY_LOCKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('UNLINK', unpack(KEYS, 3, #KEYS))
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"#,
    )
});

/// The Lua shared by the push scripts: type checks, the limit check and the append.
///
/// Every push script takes KEYS 1-5 (live records/first/keys/bytes/runs) and 6-8 (stores,
/// bytes and count indexes) in this order, so the append is spelled once.
const PUSH_COMMON: &str = r#"
-- Redis's clock when the script runs: the rate window is its second, and the replies carry
-- it in microseconds so a producer can tell which of two replies is the newer one.
local clock = redis.call('TIME')
local clock_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function check_types()
  local expected = {'list', 'string', 'set', 'string', 'list'}
  for i = 1, 5 do
    local k = redis.call('TYPE', KEYS[i])['ok']
    if k ~= 'none' and k ~= expected[i] then
      return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. k .. ', expected a ' .. expected[i])
    end
  end
  return nil
end

-- Checks a push of `count` records and `bytes` bytes against the store's limits (the field
-- `enc` of the limits hash, "records=N,bytes=N,rate=N" with any of them left out). Returns
-- {-1, limit (1 records, 2 bytes, 3 rate), max, current, requested, clock_us} when the push
-- must be refused, else nil after counting it in the current rate window (the window is Redis's
-- TIME second, so every producer shares it). The second result is 1 when the store has
-- limits. Nothing is written unless the push is admitted.
local function admit(limits_key, rate_key, enc, count, bytes)
  local spec = redis.call('HGET', limits_key, enc)
  if not spec then return nil, 0 end
  spec = ',' .. spec
  local function limit(name)
    return tonumber(string.match(spec, ',' .. name .. '=(%d+)'))
  end
  local max_records = limit('records')
  if max_records then
    local live = redis.call('LLEN', KEYS[1])
    if live + count > max_records then return {-1, 1, max_records, live, count, clock_us}, 1 end
  end
  local max_bytes = limit('bytes')
  if max_bytes then
    local live = tonumber(redis.call('GET', KEYS[4]) or '0')
    if live + bytes > max_bytes then return {-1, 2, max_bytes, live, bytes, clock_us}, 1 end
  end
  local max_rate = limit('rate')
  if max_rate then
    local window = clock[1]
    local used = 0
    local counter = redis.call('GET', rate_key)
    if counter then
      local w, c = string.match(counter, '^(%d+):(%d+)$')
      if w == window then used = tonumber(c) end
    end
    if used + count > max_rate then return {-1, 3, max_rate, used, count, clock_us}, 1 end
    -- The first write of an admitted push: when Redis is out of memory it is refused here,
    -- before any data is touched. Two seconds outlive the window it counts.
    redis.call('SET', rate_key, window .. ':' .. string.format('%d', used + count), 'PX', 2000)
  end
  return nil, 1
end

-- unpack() is limited by the Lua stack, so long argument lists go in slices.
local function in_slices(command, key, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    redis.call(command, key, unpack(ARGV, i, j))
    i = j + 1
  end
end

-- Appends the records exactly as the MULTI/EXEC of `Buffer::push_transaction` does. ARGV:
-- 1 now ms, 2 encoded name, 3 bytes, 4 record count, then at `nkeys_at` the number k of
-- unique keys, the k keys, and the records.
local function append(nkeys_at)
  local nkeys = tonumber(ARGV[nkeys_at])
  local first_record = nkeys_at + 1 + nkeys
  in_slices('RPUSH', KEYS[1], first_record, #ARGV)
  -- The run entry describing these records (see DataKeys::runs).
  local largest = 0
  for i = first_record, #ARGV do
    if #ARGV[i] > largest then largest = #ARGV[i] end
  end
  redis.call('RPUSH', KEYS[5], ARGV[4] .. ':' .. ARGV[3] .. ':' .. largest)
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
  if nkeys > 0 then
    in_slices('SADD', KEYS[3], nkeys_at + 1, nkeys_at + nkeys)
  end
  redis.call('INCRBY', KEYS[4], ARGV[3])
  redis.call('ZADD', KEYS[6], 'NX', ARGV[1], ARGV[2])
  redis.call('ZINCRBY', KEYS[7], ARGV[3], ARGV[2])
  redis.call('ZINCRBY', KEYS[8], ARGV[4], ARGV[2])
end

local function totals(status)
  return {status, redis.call('LLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[4]) or '0'),
          redis.call('SCARD', KEYS[3]), tonumber(redis.call('GET', KEYS[2]) or ARGV[1])}
end
"#;

/// Appends records unless a push with the same id was already applied, and unless the store's
/// limits refuse them.
///
/// Keys: 1-5 live records/first/keys/bytes/runs, 6 stores index, 7 bytes index, 8 count index,
/// 9 push-id marker, 10 the group's limits hash, 11 the store's rate counter. ARGV: 1 now ms,
/// 2 encoded name, 3 bytes, 4 record count, 5 marker TTL ms, 6 number of unique keys k,
/// 7..6+k the keys, then the records.
///
/// Returns `{duplicate (0/1), records, bytes, keys, first}`, or `{-1, limit, max, current,
/// requested, Redis time in µs}` when a limit refused the push (see `PUSH_COMMON`'s `admit`; a duplicate is
/// never refused: it adds nothing). Types are checked and limits checked before any write;
/// the first write (the rate counter or the marker) is the one Redis may refuse for memory,
/// so a refusal leaves the store as it was, and a refused push sets no marker.
pub(crate) static PUSH_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            PUSH_COMMON,
            r#"
local bad_type = check_types()
if bad_type then return bad_type end
if redis.call('EXISTS', KEYS[9]) == 1 then
  return totals(1)
end
local refusal = admit(KEYS[10], KEYS[11], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[3]))
if refusal then return refusal end
redis.call('SET', KEYS[9], '1', 'PX', ARGV[5])
append(6)
return totals(0)
"#,
        ]
        .concat(),
    )
});

/// Appends records to a store that has (or may have) limits, only if they fit: the push of a
/// store its producer does not know to be unlimited (see `crate::limits`).
///
/// Keys: 1-5 live records/first/keys/bytes/runs, 6 stores index, 7 bytes index, 8 count index,
/// 9 the group's limits hash, 10 the store's rate counter. ARGV: 1 now ms, 2 encoded name,
/// 3 bytes, 4 record count, 5 number of unique keys k, 6..5+k the keys, then the records.
///
/// Returns `{0, records, bytes, keys, first, limited (0/1), Redis time in µs}` when the
/// records were appended (limited: the store has limits now), or `{-1, limit, max, current,
/// requested, Redis time in µs}` when a limit refused them; then nothing was written. Checking and appending are one script, so
/// concurrent producers going through it can never overshoot a limit together.
pub(crate) static PUSH_LIMITED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            PUSH_COMMON,
            r#"
local bad_type = check_types()
if bad_type then return bad_type end
local refusal, limited = admit(KEYS[9], KEYS[10], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[3]))
if refusal then return refusal end
append(5)
local out = totals(0)
out[6] = limited
out[7] = clock_us
return out
"#,
        ]
        .concat(),
    )
});

/// Records a persister's announcement and forgets the ones silent since before a cutoff
/// (persisters killed without a chance to retire), so the hash does not grow with every crash.
///
/// Keys: 1 persisters hash. ARGV: 1 holder, 2 announcement JSON, 3 cutoff (Unix ms).
/// Returns the number of announcements forgotten. Entries that do not decode are forgotten too.
pub(crate) static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cutoff = tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local forgotten = 0
for i = 1, #entries, 2 do
  local ok, info = pcall(cjson.decode, entries[i + 1])
  if not ok or type(info) ~= 'table' or type(info.heartbeat_ms) ~= 'number'
     or info.heartbeat_ms < cutoff then
    redis.call('HDEL', KEYS[1], entries[i])
    forgotten = forgotten + 1
  end
end
return forgotten
"#,
    )
});

/// Writes a failure record, only while the batch (or live store) it is about still exists, so
/// a persister that failed after another one emptied the batch leaves nothing behind.
///
/// Keys: 1 failures hash, 2 the batch's (or store's) records list. ARGV: 1 field, 2 record
/// JSON. Returns 1 when written, 0 when the records list is gone.
pub(crate) static RECORD_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// Replaces a failure record only while it is the one the caller read and its batch (or live
/// store) still exists: an operator's retry never overwrites a newer failure, and never
/// brings back the record of a batch emptied meanwhile.
/// Keys: 1 failures hash, 2 the batch's (or store's) first-write key. ARGV: 1 field, 2 the
/// record read, 3 the new record. Returns 1 when replaced, 0 when there is no record (or its
/// batch is gone: the stale record is removed), -1 when the record changed since it was read.
pub(crate) static RETRY_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 0
end
if current ~= ARGV[2] then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#,
    )
});

/// Whether the calling user may run the commands of the operator's actions on these keys,
/// checked with `redis.acl_check_cmd` (Redis 7), writing nothing. Keys: 1 paused hash, 2
/// limits hash, 3 failures hash, 4 a store lock, 5 a live records list, 6 a batch's records
/// list. Returns 1 or 0.
pub(crate) static CAN_OPERATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local checks = {
  {'HSET', KEYS[1], 'f', 'v'}, {'HDEL', KEYS[1], 'f'},
  {'HSET', KEYS[2], 'f', 'v'}, {'HSET', KEYS[3], 'f', 'v'},
  {'SET', KEYS[4], 'v', 'NX', 'PX', '1'}, {'DEL', KEYS[4]},
  {'RENAME', KEYS[5], KEYS[6]}, {'EVALSHA', '0', '0'},
}
for _, check in ipairs(checks) do
  if not redis.acl_check_cmd(unpack(check)) then
    return 0
  end
end
return 1
"#,
    )
});

/// Removes a failure record whose batch (or live store) no longer exists.
///
/// Uses only EXISTS and HDEL, so it works when Redis is out of memory.
/// Keys: 1 failures hash, 2 the batch's (or store's) records list. ARGV: 1 field.
/// Returns 1 when removed, else 0.
pub(crate) static FORGET_STALE_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
return redis.call('HDEL', KEYS[1], ARGV[1])
"#,
    )
});

/// Sets (ARGV 2 a rules JSON text) or clears (ARGV 2 empty) a store's coalescing rules, only
/// while the store holds no records, live or prepared: rows merged under one set of rules are
/// written under them, and appended records never meet rules they were not pushed under.
///
/// Keys: 1 the group's coalesce hash, 2 the live records key, 3 the group's prepared index,
/// 4 the live entities key (a coalescing store's live entities count as its records).
/// ARGV: 1 encoded name, 2 rules JSON or "". Returns `{1, changed (0/1)}` when applied (for a
/// clear, changed says whether there were rules), or `{-1, live records, prepared batches}`
/// when refused; then nothing was written. Reads the whole prepared index of the group (one
/// entry per batch waiting to be persisted, few), never the store's data.
pub(crate) static COALESCE_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local live = redis.call('EXISTS', KEYS[2])
if live == 1 then
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind == 'list' then live = redis.call('LLEN', KEYS[2]) end
end
if redis.call('TYPE', KEYS[4])['ok'] == 'list' then
  live = live + redis.call('LLEN', KEYS[4])
end
local batches = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local colon = string.find(member, ':', 1, true)
  if colon and string.sub(member, colon + 1) == ARGV[1] then batches = batches + 1 end
end
if live > 0 or batches > 0 then
  return {-1, live, batches}
end
if ARGV[2] == '' then
  return {1, redis.call('HDEL', KEYS[1], ARGV[1])}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, 1}
"#,
    )
});

/// Merges records into a coalescing store's rows: every record's operations, prepared by
/// `crate::coalesce` (the key and each field's rule resolved there), are checked and computed
/// first, reading only; then, if none was refused and the limits admit the push, written in
/// one go. So one record is never half-applied, nor any record of a refused push.
///
/// Keys: 1 entities, 2 first, 3 keys, 4 bytes, 5 runs (checked by `check_types`, not
/// written), 6 stores index, 7 bytes index, 8 count index, 9 the group's limits hash, 10 the
/// store's rate counter, 11 rows, 12 the group's coalesce hash, 13 the push-id marker.
/// ARGV: 1 now ms, 2 encoded name, 3 bytes, 4 record count, 5 the rules' JSON text the
/// operations were made under, 6 the marker's TTL in ms or "" (no push id), 7 the number k of
/// field names, 8..7+k the names (for the key set), then per entry: its entity (the key's
/// JSON text), the writes it carries (1 for a record; more when the producer merged several
/// records of the entity first, `crate::coalesce_group`), its number of operations n, and
/// n × (op, field, value), applied in order. Ops: `l` last (also the
/// key field), `1` first, `s` sum (an i64 in decimal, or a float's JSON text), `x` max, `n`
/// min (a number's JSON text), `u` union (one element's JSON text, or "" for none).
///
/// An entity's row is one field of the rows hash, `<entity>` → its packed row
/// `<writes>\x1f<first ms>\x1f<last ms>` then `\x1e<name>\x1f<value>` per field
/// (`crate::coalesce::render_row` reads it): a merge reads its entity with one `HGET` and
/// writes it with one field of one `HSET`, and the hash holds one entry per entity. Integer
/// sums are exact within i64: added as doubles below 16 characters (exact there, the sum
/// stays below 2^53), by decimal string arithmetic beyond (Lua numbers are doubles, exact
/// only to 2^53); a sum with a float operand is a double. A union is `\n`-separated element
/// texts, `\n` first and last. Two kinds of field start with `\x1f` (no entity's does):
/// `\x1fwrites`, the writes merged into the live rows, and `\x1ftop\x1f<field>` per summed
/// field, its top 10 entities (`crate::coalesce::CoalescedView`), kept up to date by every
/// merge at a cost of O(1) per summed value (a lookup, a comparison with the list's smallest
/// sum), so a dashboard reads the top entities with one `HGET` however many entities there
/// are.
///
/// Returns `{0, entities, bytes, keys, first}` (or `{1, …}` for a push id already applied),
/// `{-1, …}` when a limit refused it (see `admit`), `{-3}` when the stored rules are not the
/// ones given (nothing written: the caller reads them again), `{-4, record index, field, rule,
/// reason}` when an entry cannot be merged (nothing written; the index counts entries, which
/// are the records when each carries one write).
pub(crate) static COALESCE_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            PUSH_COMMON,
            r#"
local bad_type = check_types()
if bad_type then return bad_type end
local rows_kind = redis.call('TYPE', KEYS[11])['ok']
if rows_kind ~= 'none' and rows_kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[11] .. ' holds a ' .. rows_kind .. ', expected a hash')
end
if (redis.call('HGET', KEYS[12], ARGV[2]) or '') ~= ARGV[5] then
  return {-3}
end
if ARGV[6] ~= '' and redis.call('EXISTS', KEYS[13]) == 1 then
  return totals(1)
end

local I64_MAX = '9223372036854775807'
local I64_MIN_MAG = '9223372036854775808'
local function is_int(text) return string.find(text, '^%-?%d+$') ~= nil end
local function split_sign(text)
  if string.sub(text, 1, 1) == '-' then return true, string.sub(text, 2) end
  return false, text
end
local function strip(mag)
  local s = string.gsub(mag, '^0+', '')
  if s == '' then return '0' end
  return s
end
local function cmp_mag(a, b)
  a, b = strip(a), strip(b)
  if #a ~= #b then return (#a < #b) and -1 or 1 end
  if a == b then return 0 end
  return (a < b) and -1 or 1
end
local function add_mag(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48 end
    if j > 0 then d = d + string.byte(b, j) - 48 end
    out[#out + 1] = string.char(48 + d % 10)
    carry = math.floor(d / 10)
    i, j = i - 1, j - 1
  end
  return strip(string.reverse(table.concat(out)))
end
local function sub_mag(a, b) -- a >= b
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow
    if j > 0 then d = d - (string.byte(b, j) - 48) end
    if d < 0 then d, borrow = d + 10, 1 else borrow = 0 end
    out[#out + 1] = string.char(48 + d)
    i, j = i - 1, j - 1
  end
  return strip(string.reverse(table.concat(out)))
end
-- Exact i64 addition of two decimal texts; nil on overflow.
local function add_int(x, y)
  local nx, mx = split_sign(x)
  local ny, my = split_sign(y)
  local neg, mag
  if nx == ny then
    neg, mag = nx, add_mag(mx, my)
  else
    local c = cmp_mag(mx, my)
    if c == 0 then return '0' end
    if c > 0 then neg, mag = nx, sub_mag(strip(mx), strip(my))
    else neg, mag = ny, sub_mag(strip(my), strip(mx)) end
  end
  if neg then
    if cmp_mag(mag, I64_MIN_MAG) > 0 then return nil end
    if mag == '0' then return '0' end
    return '-' .. mag
  end
  if cmp_mag(mag, I64_MAX) > 0 then return nil end
  return mag
end
local function add_float(x, y)
  local r = tonumber(x) + tonumber(y)
  if r ~= r or r == math.huge or r == -math.huge then return nil end
  local text = string.format('%.17g', r)
  if not string.find(text, '[%.eE]') then text = text .. '.0' end
  return text
end
-- Compares two numbers' JSON texts: exactly when both are integers, else as doubles.
local function compare(a, b)
  if is_int(a) and is_int(b) then
    local na, ma = split_sign(a)
    local nb, mb = split_sign(b)
    local c
    if na ~= nb then
      if cmp_mag(ma, '0') == 0 and cmp_mag(mb, '0') == 0 then return 0 end
      return na and -1 or 1
    end
    c = cmp_mag(ma, mb)
    if na then return -c end
    return c
  end
  local x, y = tonumber(a), tonumber(b)
  if x < y then return -1 elseif x > y then return 1 end
  return 0
end

-- Below 16 characters a number's text is a double exactly when it is an integer (|n| < 2^53);
-- compare() handles the rest.
local function order(a, b)
  if #a < 16 and #b < 16 then
    local x, y = tonumber(a), tonumber(b)
    if x < y then return -1 elseif x > y then return 1 end
    return 0
  end
  return compare(a, b)
end
-- A number's text as order() compares it: the double below 16 characters, else nil (then
-- compare() reads the text).
local function as_number(text)
  if #text < 16 then return tonumber(text) end
  return nil
end
-- order() of two numbers' texts given with their as_number().
local function order_n(a, x, b, y)
  if x and y then
    if x < y then return -1 elseif x > y then return 1 end
    return 0
  end
  return compare(a, b)
end
-- A sum of two numbers' texts and its as_number(), or nil when it leaves i64 (integers) or is
-- not finite. Integers below 16 characters are added as doubles, exact there (the sum stays
-- below 2^53); longer ones by the decimal digit loop.
local function add(current, value)
  if is_int(current) and is_int(value) then
    if #current < 16 and #value < 16 then
      local n = tonumber(current) + tonumber(value)
      return string.format('%.0f', n), n
    end
    local sum = add_int(current, value)
    return sum, sum and as_number(sum)
  end
  local sum = add_float(current, value)
  return sum, sum and as_number(sum)
end

-- Each entity's row is one field of the rows hash, <entity> -> its packed row:
-- '<writes>\31<first write ms>\31<last write ms>', then '\30<name>\31<value>' per field in
-- the order first written (a name holds no \30 nor \31: the producer refuses such names;
-- a value is compact JSON text, a union '\n'-separated element texts with '\n' first and
-- last, never a raw control character but '\n'). One field per entity rather than one per
-- entity and field: a merge reads and writes its entity once, and the hash keeps one entry
-- per entity (see BENCHMARKS.md, memory per coalesced entity).
local rows, touched, new_entities = {}, {}, {}
local function row_of(entity)
  local row = rows[entity]
  if row then return row end
  local text = redis.call('HGET', KEYS[11], entity)
  if text then
    local writes, first, last, rest = string.match(text, '^(%d+)\31(%d+)\31(%d+)(.*)$')
    if not writes then
      error('the coalesced row of entity ' .. entity .. ' in ' .. KEYS[11] .. ' is not a row')
    end
    row = {writes = tonumber(writes), first = first, last = last, names = {}, values = {}}
    local names, values = row.names, row.values
    for name, value in string.gmatch(rest, '\30([^\31\30]*)\31([^\30]*)') do
      names[#names + 1] = name
      values[name] = value
    end
  else
    row = {writes = 0, first = ARGV[1], last = ARGV[1], names = {}, values = {}}
    new_entities[#new_entities + 1] = entity
  end
  rows[entity] = row
  touched[#touched + 1] = entity
  return row
end
local function set(row, name, value)
  if row.values[name] == nil then row.names[#row.names + 1] = name end
  row.values[name] = value
end
-- '\30<name>\31' per field name, made once per push rather than once per row written, and
-- one parts table for every row (a new table per row, grown by doubling, cost more than the
-- row's text).
local heads, parts = {}, {'', '\31', '', '\31', ''}
local function packed(row)
  parts[1], parts[3], parts[5] = string.format('%d', row.writes), row.first, row.last
  local n, values = 5, row.values
  for _, name in ipairs(row.names) do
    local head = heads[name]
    if not head then
      head = '\30' .. name .. '\31'
      heads[name] = head
    end
    parts[n + 1] = head
    parts[n + 2] = values[name]
    n = n + 2
  end
  return table.concat(parts, '', 1, n)
end

-- The store's top entities by each summed field, kept in the rows hash under
-- '\31top\31<field>' (no entity's field starts with \31: an entity is a non-empty JSON
-- text): '=' (exact) or '~' (a sum in the list went down while it was full, so an entity
-- outside it may now be larger), then '\n<entity>\31<sum>' per entity, at most TOP of them.
-- While sums only grow, the list is exactly the TOP largest: an entity outside it enters
-- only by passing the smallest one in it.
local TOP = 10
local tops = {}
local function top_of(name)
  local t = tops[name]
  if t == nil then
    -- entries: {entity, sum, as_number(sum)}; at: entity -> its position in entries; low:
    -- the position of the smallest sum, or nil when it must be found again.
    t = {exact = true, entries = {}, at = {}, low = nil}
    local text = redis.call('HGET', KEYS[11], '\31top\31' .. name)
    if text then
      t.exact = string.sub(text, 1, 1) == '='
      for entity, sum in string.gmatch(text, '\n([^\n\31]+)\31([^\n]+)') do
        t.entries[#t.entries + 1] = {entity, sum, as_number(sum)}
        t.at[entity] = #t.entries
      end
    end
    tops[name] = t
  end
  return t
end
-- Numbers are compared as their as_number() (num) when both have one, so a merge costs no
-- text-to-number conversion here.
local function top_update(name, entity, sum, num, decreased)
  local t = top_of(name)
  local entries = t.entries
  local at = t.at[entity]
  if at then
    local entry = entries[at]
    entry[2], entry[3] = sum, num
    if decreased then
      if #entries >= TOP then t.exact = false end
      t.low = nil
    elseif at == t.low then
      t.low = nil
    end
    return
  end
  if #entries < TOP then
    entries[#entries + 1] = {entity, sum, num}
    t.at[entity] = #entries
    t.low = nil
    return
  end
  local low = t.low
  if low == nil then
    for k = 1, #entries do
      local e = entries[k]
      if low == nil or order_n(e[2], e[3], entries[low][2], entries[low][3]) < 0 then low = k end
    end
    t.low = low
  end
  local lowest = entries[low]
  if order_n(sum, num, lowest[2], lowest[3]) > 0 then
    t.at[lowest[1]] = nil
    entries[low] = {entity, sum, num}
    t.at[entity] = low
    t.low = nil
  end
end

local nkeys = tonumber(ARGV[7])
local i = 8 + nkeys
local index = 0
-- Per entity: its key text, the writes merged into this entry (1 per record, more when the
-- producer merged a group's records of the entity first: coalesce_group.rs), its operations.
while i <= #ARGV do
  local entity = ARGV[i]
  local writes = tonumber(ARGV[i + 1])
  local ops = tonumber(ARGV[i + 2])
  i = i + 3
  local row = row_of(entity)
  row.writes = row.writes + writes
  row.last = ARGV[1]
  local values = row.values
  for _ = 1, ops do
    local op, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    local current = values[name]
    if op == 'l' then
      set(row, name, value)
    elseif op == '1' then
      if current == nil then set(row, name, value) end
    elseif op == 's' then
      local sum, num = value, nil
      if current then
        sum, num = add(current, value)
        if not sum then
          if is_int(current) and is_int(value) then
            return {-4, index, name, 'sum', 'the sum ' .. current .. ' + ' .. value .. ' overflows a 64-bit integer'}
          end
          return {-4, index, name, 'sum', 'the sum ' .. current .. ' + ' .. value .. ' is not a finite number'}
        end
      end
      if not current then num = as_number(sum) end
      set(row, name, sum)
      -- 45 is '-': a negative operand (not -0) may lower the sum.
      top_update(name, entity, sum, num, string.byte(value) == 45 and tonumber(value) ~= 0)
    elseif op == 'x' or op == 'n' then
      if current == nil then
        set(row, name, value)
      else
        local c = order(value, current)
        if (op == 'x' and c > 0) or (op == 'n' and c < 0) then set(row, name, value) end
      end
    elseif op == 'u' then
      current = current or '\n'
      if value ~= '' and not string.find(current, '\n' .. value .. '\n', 1, true) then
        current = current .. value .. '\n'
      end
      set(row, name, current)
    else
      return redis.error_reply('ERR unknown coalescing operation ' .. tostring(op))
    end
  end
  index = index + 1
end

local refusal = admit(KEYS[9], KEYS[10], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[3]))
if refusal then return refusal end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[13], '1', 'PX', ARGV[6])
end
local pairs_out = {}
for _, entity in ipairs(touched) do
  pairs_out[#pairs_out + 1] = entity
  pairs_out[#pairs_out + 1] = packed(rows[entity])
end
pairs_out[#pairs_out + 1] = '\31writes'
pairs_out[#pairs_out + 1] = string.format('%d', tonumber(redis.call('HGET', KEYS[11], '\31writes') or '0') + tonumber(ARGV[4]))
for name, t in pairs(tops) do
  local parts = {t.exact and '=' or '~'}
  for _, entry in ipairs(t.entries) do
    parts[#parts + 1] = '\n' .. entry[1] .. '\31' .. entry[2]
  end
  pairs_out[#pairs_out + 1] = '\31top\31' .. name
  pairs_out[#pairs_out + 1] = table.concat(parts)
end
for j = 1, #pairs_out, 2000 do
  redis.call('HSET', KEYS[11], unpack(pairs_out, j, math.min(j + 1999, #pairs_out)))
end
for j = 1, #new_entities, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(new_entities, j, math.min(j + 999, #new_entities)))
end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
if nkeys > 0 then
  in_slices('SADD', KEYS[3], 8, 7 + nkeys)
end
redis.call('INCRBY', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[6], 'NX', ARGV[1], ARGV[2])
redis.call('ZINCRBY', KEYS[7], ARGV[3], ARGV[2])
redis.call('ZINCRBY', KEYS[8], #new_entities, ARGV[2])
return totals(0)
"#,
        ]
        .concat(),
    )
});
