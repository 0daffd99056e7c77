//! The Lua scripts. Each is atomic on the server and touches keys of one slot only.
//!
//! Scripts are used where a step must be conditional *and* atomic (MULTI cannot branch):
//! preparing a batch only when the store has records, and releasing, extending or emptying
//! under a lock only when the caller's token still holds it.
//!
//! The persister's scripts (lock, prepare, extend, release, empty) carry the `allow-oom` flag:
//! when Redis is out of memory, draining is what frees it, so the drain must not be refused.
//! They allocate only a lock value and an index entry. `PUSH_ONCE` has no such flag: pushes are
//! refused when Redis is out of memory.

use std::sync::LazyLock;

use redis::Script;

/// Moves a live store to a batch.
///
/// Keys: 1-5 live records/first/keys/bytes/runs, 6-10 the same for the batch, 11 stores
/// index, 12 bytes index, 13 count index, 14 prepared index, 15 store lock, 16 batch lock.
/// ARGV: 1 encoded name, 2 prepared-index member, 3 batch ms, 4 lock value or "", 5 the batch
/// lock's TTL in ms (used when ARGV 4 is a lock value).
///
/// Returns `{0}` when the store has no records, `{-1}` when the lock value does not match,
/// `{-2}` when the batch id is taken, else `{1, records, bytes, keys, first}`. Every type is
/// checked before the first write, so a WRONGTYPE error leaves the store untouched.
///
/// The batch lock gets the caller's full TTL, never a copy of the store lock's `PTTL`: that is
/// 0 or -1 for a key in its last millisecond or one without expiry, and a lock written without
/// `PX` would never expire, leaving the batch stuck for good if its holder died.
pub(crate) static PREPARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
local function kind(key) return redis.call('TYPE', key)['ok'] end
local records_kind = kind(KEYS[1])
if records_kind == 'none' then
  redis.call('ZREM', KEYS[11], ARGV[1])
  redis.call('ZREM', KEYS[12], ARGV[1])
  redis.call('ZREM', KEYS[13], ARGV[1])
  return {0}
end
local expected = {'list', 'string', 'set', 'string', 'list'}
for i = 1, 5 do
  local k = kind(KEYS[i])
  if k ~= 'none' and k ~= expected[i] then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. k .. ', expected a ' .. expected[i])
  end
end
local lock_ttl = tonumber(ARGV[5])
if ARGV[4] ~= '' and (lock_ttl == nil or lock_ttl < 1) then
  return redis.error_reply('ERR the batch lock TTL must be at least 1 ms, got ' .. tostring(ARGV[5]))
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[15]) ~= ARGV[4] then
  return {-1}
end
if redis.call('EXISTS', KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]) > 0 then
  return {-2}
end
-- The writes Redis may refuse when out of memory (SET, ZADD) come first, so a refusal
-- leaves the live store untouched; RENAME, ZREM and DEL are never refused.
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[16], ARGV[4], 'PX', lock_ttl)
end
redis.call('ZADD', KEYS[14], ARGV[3], ARGV[2])
for i = 1, 5 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 5])
  end
end
redis.call('ZREM', KEYS[11], ARGV[1])
redis.call('ZREM', KEYS[12], ARGV[1])
redis.call('ZREM', KEYS[13], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[15])
end
return {1, redis.call('LLEN', KEYS[6]), tonumber(redis.call('GET', KEYS[9]) or '0'),
        redis.call('SCARD', KEYS[8]), tonumber(redis.call('GET', KEYS[7]) or '0')}
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

/// Appends records unless a push with the same id was already applied.
///
/// Keys: 1-5 live records/first/keys/bytes/runs, 6 stores index, 7 bytes index, 8 count index,
/// 9 push-id marker. ARGV: 1 now ms, 2 encoded name, 3 bytes, 4 record count, 5 marker TTL ms,
/// 6 number of unique keys k, 7..6+k the keys, then the records.
///
/// Returns `{duplicate (0/1), records, bytes, keys, first}`. Types are checked and the
/// marker (the one write Redis may refuse for memory before any other) is set before the data
/// is touched, so a refusal leaves the store as it was.
pub(crate) static PUSH_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function totals(duplicate)
  return {duplicate, redis.call('LLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[4]) or '0'),
          redis.call('SCARD', KEYS[3]), tonumber(redis.call('GET', KEYS[2]) or ARGV[1])}
end
local expected = {'list', 'string', 'set', 'string', 'list'}
for i = 1, 5 do
  local k = redis.call('TYPE', KEYS[i])['ok']
  if k ~= 'none' and k ~= expected[i] then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. k .. ', expected a ' .. expected[i])
  end
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  return totals(1)
end
redis.call('SET', KEYS[9], '1', 'PX', ARGV[5])
local nkeys = tonumber(ARGV[6])
local first_record = 7 + nkeys
-- unpack() is limited by the Lua stack, so long argument lists go in slices.
local function in_slices(command, key, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    redis.call(command, key, unpack(ARGV, i, j))
    i = j + 1
  end
end
in_slices('RPUSH', KEYS[1], first_record, #ARGV)
-- The run entry describing these records, as push_encoded writes it (see DataKeys::runs).
local largest = 0
for i = first_record, #ARGV do
  if #ARGV[i] > largest then largest = #ARGV[i] end
end
redis.call('RPUSH', KEYS[5], ARGV[4] .. ':' .. ARGV[3] .. ':' .. largest)
redis.call('SET', KEYS[2], ARGV[1], 'NX')
if nkeys > 0 then
  in_slices('SADD', KEYS[3], 7, 6 + nkeys)
end
redis.call('INCRBY', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[6], 'NX', ARGV[1], ARGV[2])
redis.call('ZINCRBY', KEYS[7], ARGV[3], ARGV[2])
redis.call('ZINCRBY', KEYS[8], ARGV[4], ARGV[2])
return totals(0)
"#,
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
