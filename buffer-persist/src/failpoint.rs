//! Crash points for the fault-injection suite.
//!
//! With the `failpoints` feature, `failpoint("step")` aborts the process (as `kill -9` would:
//! no destructors, no lock release) when the environment variable `BUFFER_FAILPOINT` equals
//! `step`. Without the feature it compiles to nothing. The steps, in order: `after-lock`,
//! `after-prepare`, `after-temp-write`, `before-fsync`, `after-fsync`, `after-rename`,
//! `after-dir-fsync`, `after-delete`.

/// Aborts the process here when `BUFFER_FAILPOINT` names this step (feature `failpoints`).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(step: &str) {
    if std::env::var("BUFFER_FAILPOINT").is_ok_and(|wanted| wanted == step) {
        eprintln!("failpoint {step}: aborting");
        std::process::abort();
    }
}

/// Compiled out: failpoints exist only with the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_step: &str) {}
