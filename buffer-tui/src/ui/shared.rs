//! Small pieces more than one panel draws.

use ratatui::layout::Alignment;
use ratatui::text::{Line, Span};
use ratatui::widgets::Cell;

use super::theme;
use crate::app::App;
use crate::format::{age_ms, duration_ms, fit};

pub(super) fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).alignment(Alignment::Right))
}

/// A failure in few columns: `✗<attempts>` and when it is retried.
pub(super) fn failure_brief(app: &App, record: &buffer_core::FailureRecord) -> String {
    match record.next_retry_ms.saturating_sub(app.now_ms) {
        0 => format!("✗{} retry due", record.attempts),
        ms => format!("✗{} retry {}", record.attempts, age_ms(ms + 999)),
    }
}

/// A lock's remaining TTL, counted down since the poll that read it.
pub(super) fn ttl_text(app: &App, ttl_ms: Option<u64>) -> String {
    match ttl_ms.map(|ttl| app.remaining_ttl(ttl)) {
        None => "∞".into(),
        Some(0) => "expired".into(),
        Some(ms) => duration_ms(ms),
    }
}

/// A batch id in few columns: the end of its random part, which is what tells batches apart
/// (the age column tells the time).
pub(super) fn short_id(id: &buffer_core::BatchId) -> String {
    let id = id.to_string();
    let tail = id.len().saturating_sub(8);
    format!("…{}", &id[tail..])
}

pub(super) fn store_title(app: &App) -> Line<'static> {
    match app.selected_row() {
        Some(row) => Line::from(vec![
            Span::raw(" "),
            Span::styled(fit(row.name.as_str(), 40), theme::STRONG),
            Span::raw(" "),
        ]),
        None => Line::from(" No store selected "),
    }
}
