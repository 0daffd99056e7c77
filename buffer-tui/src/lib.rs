//! `buffer-tui`: the live dashboard of buffer, and its one-command demo.
//!
//! The dashboard follows the Elm architecture: `App` is plain state with no Redis and no
//! terminal in it, `App::update` applies an `Action`, and `ui::render` draws an `&App`.
//! Background tasks poll Redis through `buffer-core` and send `Action::Snapshot`s over a
//! channel; the dashboard never writes to Redis.
//!
//! # Layout
//! - `app`: `App`, `Action` and `update`: selection, sorting, filtering, TTL countdown,
//!   rates. Tested as plain function calls.
//! - `snapshot`: `Snapshot`, what one poll saw.
//! - `keys`: the one key-binding table: key presses to `Action`s, the footer hints and the
//!   help screen. The only module that knows crossterm's key events.
//! - `layout`: where each part goes on a terminal of a given size, and how many table rows
//!   that leaves (sent to `App` as `Action::Viewport` by the dashboard loop).
//! - `ui`: `render(&App, frame)`, one module per panel under `ui/` and `ui/theme.rs` with
//!   every colour and style; tested with `TestBackend` and `insta` snapshots.
//! - `poller`: the polling task (index data for every store, details only for the rows on
//!   screen) and the persister-event follower.
//! - `dashboard`: `Dashboard`, the terminal loop tying keys, ticks and polls together.
//! - `terminal`: [`TerminalGuard`]: raw mode and the alternate screen, restored on exit and on panic.
//! - `demo`: the load generator and `run_demo`, on a private redis-server started by
//!   buffer-core's `local_server::LocalRedis` (the launcher the tests use too).
//! - [`cli`]: the command line; `main.rs` only parses it and calls [`cli::execute`].
//!
//! The public surface is what `main.rs` and the crate's own tests use: [`cli`] and
//! [`TerminalGuard`]. The state, panels and poller are `pub(crate)`: buffer-tui is a binary,
//! and embedders read Redis through buffer-core.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod app;
pub mod cli;
mod dashboard;
mod demo;
mod error;
mod format;
mod keys;
mod layout;
mod poller;
mod snapshot;
mod terminal;
mod ui;

/// The API boundary holds (ARCHITECTURE.md, "API boundaries"): the dashboard's state, poller,
/// demo and panels are not reachable from outside the crate.
/// Each block must fail to compile; its error code says why (stable rustdoc does not check
/// the code, nightly does).
///
/// ```compile_fail,E0432
/// use buffer_tui::App;
/// ```
/// ```compile_fail,E0603
/// use buffer_tui::app::Action;
/// ```
/// ```compile_fail,E0432
/// use buffer_tui::run_demo;
/// ```
/// ```compile_fail,E0603
/// use buffer_tui::ui::render;
/// ```
/// ```compile_fail,E0432
/// use buffer_tui::poll_once;
/// ```
#[cfg(doctest)]
struct PrivateSurface;

// A binary's library: `main.rs` needs `cli`, and the terminal test in `tests/tmux.rs` needs the
// guard that restores the terminal. Everything else is crate-private.
pub use terminal::TerminalGuard;
