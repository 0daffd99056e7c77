//! The persister events, newest first.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget};

use buffer_core::EventKind;

use super::theme;
use crate::app::{App, EventFeed};
use crate::format::{age_ms, clean, count, fit};

pub(super) fn event_style(kind: EventKind) -> (&'static str, Style) {
    match kind {
        EventKind::Prepared => ("prepared", theme::PUSH),
        EventKind::Persisted => ("persisted", theme::GOOD),
        EventKind::Failed => ("failed", theme::FAILING),
        EventKind::Recovered => ("recovered", theme::ATTENTION),
    }
}

pub(super) fn render_events(app: &App, area: Rect, buf: &mut Buffer) {
    let feed = match &app.feed {
        EventFeed::Connecting => Span::styled("subscribing", theme::ATTENTION),
        EventFeed::Live => Span::styled("live", theme::GOOD),
        EventFeed::Lost(_) => Span::styled("lost, retrying", theme::BAD),
    };
    let block = Block::bordered().title(Line::from(vec![
        Span::styled(" Persister events ", theme::STRONG),
        feed,
        Span::raw(" "),
    ]));
    let inner = block.inner(area);
    block.render(area, buf);
    let width = usize::from(inner.width);
    if app.events.is_empty() {
        Paragraph::new(Line::styled("none yet", theme::DIM)).render(inner, buf);
        return;
    }
    let lines: Vec<Line<'static>> = app
        .events
        .iter()
        .take(usize::from(inner.height))
        .map(|event| {
            let (name, style) = event_style(event.kind);
            let ago = age_ms(app.now_ms.saturating_sub(event.at_ms));
            let head = format!("{ago:>5} ");
            let sizes = if event.kind == EventKind::Failed {
                String::new()
            } else {
                format!(" {} rec", count(event.records))
            };
            let used = head.len() + 10 + sizes.len();
            let store_width = width.saturating_sub(used).min(24);
            let store = fit(&event.store, store_width);
            let mut spans = vec![
                Span::styled(head, theme::DIM),
                Span::styled(format!("{name:<9} "), style),
                Span::raw(store),
                Span::raw(sizes),
            ];
            if let Some(detail) = &event.detail {
                let used: usize = spans.iter().map(Span::width).sum();
                let room = width.saturating_sub(used + 1);
                if room > 3 {
                    // A file path differs at its end, an error message says most at its start.
                    let detail = if event.kind == EventKind::Persisted {
                        fit_tail(detail, room)
                    } else {
                        fit(detail, room)
                    };
                    spans.push(Span::styled(format!(" {detail}"), theme::DIM));
                }
            }
            Line::from(spans)
        })
        .collect();
    Paragraph::new(lines).render(inner, buf);
}

/// The end of `text` in at most `max` columns: for file paths, the end is what differs.
pub(super) fn fit_tail(text: &str, max: usize) -> String {
    let text = clean(text);
    if crate::format::width(&text) <= max {
        return text.into_owned();
    }
    let reversed: String = text.chars().rev().collect();
    let cut = fit(&reversed, max);
    let mut out: String = cut.trim_end_matches('…').chars().rev().collect();
    out.insert(0, '…');
    out
}
