//! [`LimitCache`]: what one producer knows about which stores have limits (`crate::limits`).
//! A leaf module, so the handle (`buffer.rs`) can hold one without depending on the limits
//! operations.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::name::StoreName;

/// What one producer (one `Buffer` and its clones) last learned about whether each store
/// has limits. Written after every push reply (script or MULTI/EXEC), read before every push.
/// A store not in the map is unknown, and pushed through the script, which is always right.
///
/// Replies are processed by whichever task awaited them, not necessarily in the order Redis
/// executed the pushes, so each observation carries Redis's clock at execution (µs) and an
/// older one never replaces a newer one: once a reply of a push executed after a limit was
/// set has been read, no late reply of an earlier push can make the store look unlimited.
#[derive(Debug, Default)]
pub(crate) struct LimitCache {
    /// Encoded store name → (the store had limits, Redis time in µs when that was seen). It
    /// holds one entry per store this producer pushed to, as the group indexes hold one per
    /// live store.
    known: Mutex<HashMap<String, (bool, u64)>>,
}

impl LimitCache {
    /// True unless the store is known to have no limits.
    pub(crate) fn needs_script(&self, store: &StoreName) -> bool {
        match self.known.lock() {
            Ok(known) => !matches!(known.get(store.encoded()), Some((false, _))),
            // A panic elsewhere while holding the lock: the script is always right.
            Err(_) => true,
        }
    }

    /// Records what a push reply executed at `at_us` (Redis time) said about the store,
    /// unless a newer observation is already there (on a tie, "limited" wins).
    pub(crate) fn observe(&self, store: &StoreName, limited: bool, at_us: u64) {
        if let Ok(mut known) = self.known.lock() {
            let entry = known
                .entry(store.encoded().to_owned())
                .or_insert((limited, at_us));
            if at_us > entry.1 || (at_us == entry.1 && limited) {
                *entry = (limited, at_us);
            }
        }
    }

    /// Forgets what is known about the store: its next push goes through the script.
    pub(crate) fn forget(&self, store: &StoreName) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(store.encoded());
        }
    }
}

/// How long a producer trusts that a store has no coalescing rules before reading them again.
/// A MULTI/EXEC push tells it sooner (its `HEXISTS`); a script push (a store with limits,
/// `push_once`) does not, so this bounds how long such a producer may append to a store that
/// became coalescing.
pub(crate) const NO_RULES_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// What one producer knows of each store's coalescing rules (their JSON text, or none), read
/// before every push: a store not in the map is unknown and its rules are read (`HGET`).
/// The merge script compares the text it was given with the stored one and refuses a push
/// made under other rules, a MULTI/EXEC push reports whether the store has rules, and "no
/// rules" is trusted for [`NO_RULES_TRUSTED_FOR`] only, so a stale entry is read again soon.
#[derive(Debug, Default)]
pub(crate) struct RulesCache {
    known: Mutex<HashMap<String, KnownRules>>,
}

/// A store's rules text (or none), and when that was learned.
type KnownRules = (Option<std::sync::Arc<str>>, std::time::Instant);

impl RulesCache {
    /// `None` when unknown (or "no rules" learned too long ago), `Some(None)` for a store
    /// known to have no rules.
    pub(crate) fn get(&self, store: &StoreName) -> Option<Option<std::sync::Arc<str>>> {
        let known = self.known.lock().ok()?;
        let (rules, at) = known.get(store.encoded())?;
        if rules.is_none() && at.elapsed() > NO_RULES_TRUSTED_FOR {
            return None;
        }
        Some(rules.clone())
    }

    pub(crate) fn set(&self, store: &StoreName, rules: Option<std::sync::Arc<str>>) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(
                store.encoded().to_owned(),
                (rules, std::time::Instant::now()),
            );
        }
    }

    pub(crate) fn forget(&self, store: &StoreName) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(store.encoded());
        }
    }
}
