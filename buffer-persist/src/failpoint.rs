//! Crash points for the fault-injection suite.
//!
//! With the `failpoints` feature, `failpoint("step")` acts when the environment variable
//! `BUFFER_FAILPOINT` names this step: `step` aborts the process (as `kill -9` would: no
//! destructors, no lock release), `step:stop` stops it with SIGSTOP (as a long GC pause or
//! a frozen VM would) until someone sends SIGCONT, and `step:sleep=MS` holds the calling
//! thread for MS milliseconds while the rest of the process runs on (a slow disk: an fsync,
//! a link or a directory fsync that takes that long). Without the feature it compiles to
//! nothing.
//! The steps of a batch, in order: `after-lock`, `after-prepare`, `after-dir-create` (its
//! store's directory exists and is durable), `after-temp-write`, `before-fsync`,
//! `after-fsync`, `after-link` (published under its name), `after-dir-fsync` (that name is
//! durable), `after-delete`. Once per output directory, before any batch: `after-marker` (the
//! `.buffer-persist` marker is published and durable). With a PostgreSQL output, between
//! the rows and the delete: `before-commit` (rows and ledger row sent, transaction open) and
//! `after-commit` (committed, the batch still in Redis).

/// Acts as `BUFFER_FAILPOINT` says when it names this step (feature `failpoints`).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(step: &str) {
    let Ok(wanted) = std::env::var("BUFFER_FAILPOINT") else {
        return;
    };
    if wanted == step {
        eprintln!("failpoint {step}: aborting");
        std::process::abort();
    }
    if let Some(ms) = wanted
        .strip_prefix(step)
        .and_then(|rest| rest.strip_prefix(":sleep="))
    {
        let ms: u64 = ms
            .parse()
            .unwrap_or_else(|_| panic!("BUFFER_FAILPOINT {wanted:?}: sleep wants milliseconds"));
        eprintln!("failpoint {step}: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return;
    }
    if wanted.strip_suffix(":stop") == Some(step) {
        eprintln!("failpoint {step}: stopping until SIGCONT");
        // No unsafe code in this workspace: ask kill(1) to stop us.
        let _ = std::process::Command::new("kill")
            .arg("-STOP")
            .arg(std::process::id().to_string())
            .status();
    }
}

/// Compiled out: failpoints exist only with the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_step: &str) {}
