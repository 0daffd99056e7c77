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

/// The selected store's name and, on a cluster, the node holding it (in the failing colour,
/// and said so, while that master does not answer).
pub(super) fn store_title(app: &App) -> Line<'static> {
    let Some(row) = app.selected_row() else {
        return Line::from(" No store selected ");
    };
    let mut spans = vec![
        Span::raw(" "),
        Span::styled(fit(row.name.as_str(), 40), theme::STRONG),
        Span::raw(" "),
    ];
    let node = row
        .detail
        .as_ref()
        .and_then(|detail| detail.node.as_deref())
        .or_else(|| {
            app.focus
                .as_ref()
                .filter(|focus| focus.store == row.name)
                .and_then(|focus| focus.node.as_deref())
        });
    if let Some(node) = node {
        let down = app
            .masters
            .iter()
            .flatten()
            .any(|master| master.address == node && !master.is_up());
        spans.push(Span::styled("· node ", theme::DIM));
        if down {
            spans.push(Span::styled(
                format!("{} (down) ", fit(node, 30)),
                theme::FAILING,
            ));
        } else {
            spans.push(Span::raw(format!("{} ", fit(node, 30))));
        }
    }
    Line::from(spans)
}
