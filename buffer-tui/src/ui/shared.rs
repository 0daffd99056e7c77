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

/// One part of a line that is shown whole or not at all, with how much it is worth keeping
/// (higher is kept longer).
pub(super) struct Part {
    pub(super) keep: u8,
    pub(super) spans: Vec<Span<'static>>,
}

impl Part {
    pub(super) fn new(keep: u8, spans: Vec<Span<'static>>) -> Self {
        Self { keep, spans }
    }
}

/// The parts that fit in `width` columns, in their order: while they do not fit, the part
/// least worth keeping (the last of equals) is left out, so no word is ever cut. Only when
/// the parts worth the most do not fit on their own is the line cut (by the terminal edge).
pub(super) fn fit_parts(mut parts: Vec<Part>, width: usize) -> Line<'static> {
    let total = |parts: &[Part]| -> usize {
        parts
            .iter()
            .flat_map(|part| &part.spans)
            .map(Span::width)
            .sum()
    };
    while total(&parts) > width && parts.len() > 1 {
        let least = parts.iter().map(|part| part.keep).min().unwrap_or(0);
        let Some(last) = parts.iter().rposition(|part| part.keep == least) else {
            break;
        };
        if least == u8::MAX {
            break;
        }
        parts.remove(last);
    }
    Line::from(
        parts
            .into_iter()
            .flat_map(|part| part.spans)
            .collect::<Vec<_>>(),
    )
}
