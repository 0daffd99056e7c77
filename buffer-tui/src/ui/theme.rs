//! Every colour and style of the dashboard, by what it means.
//!
//! Only the terminal's named ANSI colours and modifiers (no fixed greys, no painted
//! backgrounds except the disconnected banner and the selection, which is reversed), so the
//! dashboard reads on dark and light themes alike.

use ratatui::style::{Color, Modifier, Style};

const BOLD: Modifier = Modifier::BOLD;

/// Labels and secondary text: `ns`, `mem`, "none yet", unknown cells.
pub(crate) const DIM: Style = Style::new().add_modifier(Modifier::DIM);
/// Titles, headers, the address, a TTL: text that should stand out without colour.
pub(crate) const STRONG: Style = Style::new().add_modifier(BOLD);
/// The ` buffer ` badge at the top left.
pub(crate) const BRAND: Style = Style::new().add_modifier(BOLD.union(Modifier::REVERSED));
/// The header cell of the sort column.
pub(crate) const SORTED_HEADER: Style = Style::new().add_modifier(BOLD.union(Modifier::UNDERLINED));
/// The selected table row.
pub(crate) const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED.union(BOLD));
/// A key in the footer and the help.
pub(crate) const KEY: Style = Style::new().fg(Color::Cyan).add_modifier(BOLD);

/// Something to look at that is not wrong: a held lock, a filter, connecting, a recovery.
pub(crate) const ATTENTION: Style = Style::new().fg(Color::Yellow);
/// The same, stronger: a flush due now, the filter prompt.
pub(crate) const ATTENTION_STRONG: Style = Style::new().fg(Color::Yellow).add_modifier(BOLD);
/// Working as it should: connected, events live, a batch persisted.
pub(crate) const GOOD: Style = Style::new().fg(Color::Green);
/// Lost, being retried: the event feed.
pub(crate) const BAD: Style = Style::new().fg(Color::Red);
/// Failing: disconnected, a failed event, batches that fail to persist.
pub(crate) const FAILING: Style = Style::new().fg(Color::Red).add_modifier(BOLD);
/// The disconnected banner, painted so it cannot be missed.
pub(crate) const BANNER: Style = Style::new()
    .fg(Color::White)
    .bg(Color::Red)
    .add_modifier(BOLD);
/// The demo's label and stores with prepared batches waiting.
pub(crate) const ACCENT: Style = Style::new().fg(Color::Magenta).add_modifier(BOLD);

/// Records flowing in: the push rate, `prepared` events.
pub(crate) const PUSH: Style = Style::new().fg(Color::Cyan);
/// Records flowing out: the persist rate (and [`GOOD`] for `persisted` events).
pub(crate) const PERSIST: Style = Style::new().fg(Color::Green);

/// `style`, emphasised: a rate's label in its colour.
pub(crate) const fn strong(style: Style) -> Style {
    style.add_modifier(BOLD)
}
