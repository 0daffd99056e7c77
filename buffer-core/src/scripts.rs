//! The Lua scripts. Each is atomic on the server and touches keys of one slot only.
//!
//! Scripts are used where a step must be conditional *and* atomic (MULTI cannot branch):
//! preparing a batch only when the store has records, and releasing, extending or emptying
//! under a lock only when the caller's token still holds it.

use std::sync::LazyLock;

use redis::Script;

/// Moves a live store to a batch.
///
/// KEYS: 1-4 live records/first/keys/bytes, 5-8 the same for the batch, 9 stores index,
/// 10 bytes index, 11 count index, 12 prepared index, 13 store lock, 14 batch lock.
/// ARGV: 1 encoded name, 2 prepared-index member, 3 batch ms, 4 lock value or "".
///
/// Returns `{0}` when the store has no records, `{-1}` when the lock value does not match,
/// `{-2}` when the batch id is taken, else `{1, records, bytes, keys, first}`. Every type is
/// checked before the first write, so a WRONGTYPE error leaves the store untouched.
pub(crate) static PREPARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function kind(key) return redis.call('TYPE', key)['ok'] end
local records_kind = kind(KEYS[1])
if records_kind == 'none' then
  redis.call('ZREM', KEYS[9], ARGV[1])
  redis.call('ZREM', KEYS[10], ARGV[1])
  redis.call('ZREM', KEYS[11], ARGV[1])
  return {0}
end
local expected = {'list', 'string', 'set', 'string'}
for i = 1, 4 do
  local k = kind(KEYS[i])
  if k ~= 'none' and k ~= expected[i] then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. k .. ', expected a ' .. expected[i])
  end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[13]) ~= ARGV[4] then
  return {-1}
end
if redis.call('EXISTS', KEYS[5], KEYS[6], KEYS[7], KEYS[8]) > 0 then
  return {-2}
end
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 4])
  end
end
redis.call('ZREM', KEYS[9], ARGV[1])
redis.call('ZREM', KEYS[10], ARGV[1])
redis.call('ZREM', KEYS[11], ARGV[1])
redis.call('ZADD', KEYS[12], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
  local ttl = redis.call('PTTL', KEYS[13])
  if ttl > 0 then
    redis.call('SET', KEYS[14], ARGV[4], 'PX', ttl)
  else
    redis.call('SET', KEYS[14], ARGV[4])
  end
  redis.call('DEL', KEYS[13])
end
return {1, redis.call('LLEN', KEYS[5]), tonumber(redis.call('GET', KEYS[8]) or '0'),
        redis.call('SCARD', KEYS[7]), tonumber(redis.call('GET', KEYS[6]) or '0')}
"#,
    )
});

/// Deletes a key when it holds the given value. KEYS: 1 lock. ARGV: 1 value. Returns 1 or 0.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Sets a new TTL on a key when it holds the given value.
/// KEYS: 1 lock. ARGV: 1 value, 2 ttl ms. Returns 1 or 0.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
/// KEYS: 1 lock, 2 prepared index, 3-6 batch data keys. ARGV: 1 value, 2 prepared member.
/// Returns 1, or 0 when the lock is not held.
pub(crate) static EMPTY_LOCKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('UNLINK', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"#,
    )
});
