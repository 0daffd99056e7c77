//! The persisters screen (`P`): every persister that announced itself, its thresholds and
//! output, when it last did, and the stores and batches whose locks it holds now.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget};

use super::shared::{short_id, ttl_text};
use super::theme;
use crate::app::App;
use crate::format::{age_ms, bytes, clean, count, duration_ms, fit};

pub(super) fn render_persisters(app: &App, area: Rect, buf: &mut Buffer) {
    let silent = app.persisters.iter().filter(|p| app.is_silent(p)).count();
    let mut title = vec![Span::styled(" Persisters ", theme::STRONG)];
    title.push(Span::raw(format!("{} ", app.persisters.len())));
    if silent > 0 {
        title.push(Span::styled(format!("· {silent} silent "), theme::FAILING));
    }
    let block = Block::bordered()
        .title(Line::from(title))
        .title_bottom(Line::styled(" Esc/P back ", theme::DIM));
    let inner = block.inner(area);
    block.render(area, buf);
    let width = usize::from(inner.width);
    let mut lines: Vec<Line<'static>> = Vec::new();
    if app.persisters.is_empty() {
        lines.push(Line::from(
            "No persister has announced itself: start `buffer-persist run`.",
        ));
    }
    for persister in &app.persisters {
        let (host, _) = persister
            .holder
            .rsplit_once('/')
            .unwrap_or((persister.holder.as_str(), ""));
        let since = app.now_ms.saturating_sub(persister.heartbeat_ms);
        let heard = if app.is_silent(persister) {
            Span::styled(format!("SILENT for {}", age_ms(since)), theme::FAILING)
        } else {
            Span::styled(format!("heard {} ago", age_ms(since)), theme::GOOD)
        };
        lines.push(Line::from(vec![
            Span::styled(fit(&clean(&persister.holder), 32), theme::STRONG),
            Span::styled(format!("  host {}", fit(&clean(host), 20)), theme::DIM),
            Span::raw(format!(
                "  v{}  ",
                clean(persister.version.as_deref().unwrap_or("?"))
            )),
            heard,
        ]));
        lines.push(Line::from(vec![
            Span::styled("  out ", theme::DIM),
            Span::raw(fit(&clean(&persister.out), width.saturating_sub(8))),
        ]));
        let mut thresholds = format!(
            "  max-age {}",
            duration_ms(buffer_core::millis(persister.max_age))
        );
        if let Some(max) = persister.max_bytes {
            thresholds.push_str(&format!("  max-bytes {}", bytes(max)));
        }
        if let Some(max) = persister.max_records {
            thresholds.push_str(&format!("  max-records {}", count(max)));
        }
        if let Some(interval) = persister.interval {
            thresholds.push_str(&format!(
                "  every {}",
                duration_ms(buffer_core::millis(interval))
            ));
        }
        lines.push(Line::from(fit(&thresholds, width)));
        lines.push(Line::styled(
            format!(
                "  persisted {} batches, {} records since it started",
                count(persister.batches_persisted),
                count(persister.records_persisted)
            ),
            theme::DIM,
        ));
        let held: Vec<_> = app
            .held
            .iter()
            .filter(|h| h.lock.holder == persister.holder)
            .collect();
        if held.is_empty() {
            lines.push(Line::styled("  holds nothing now", theme::DIM));
        }
        for h in held {
            lines.push(held_line(app, &h.store, &h.lock, width));
        }
        lines.push(Line::from(""));
    }
    // Locks whose holder did not announce itself: a library user, the CLI, a persister of an
    // older version.
    let others: Vec<_> = app
        .held
        .iter()
        .filter(|h| !app.persisters.iter().any(|p| p.holder == h.lock.holder))
        .collect();
    if !others.is_empty() {
        lines.push(Line::styled(
            "Held by processes that did not announce themselves",
            theme::STRONG,
        ));
        for h in others {
            let mut line = held_line(app, &h.store, &h.lock, width);
            line.spans.push(Span::styled(
                format!("  by {}", clean(&h.lock.holder)),
                theme::DIM,
            ));
            lines.push(line);
        }
    }
    Paragraph::new(lines).render(inner, buf);
}

/// `  holds batch …89abcdef of "orders"  TTL 4.2s` (or the store lock, while preparing).
fn held_line(
    app: &App,
    store: &buffer_core::StoreName,
    lock: &crate::snapshot::HeldLock,
    width: usize,
) -> Line<'static> {
    let what = match &lock.batch {
        Some(batch) => format!("  holds batch {} of ", short_id(batch)),
        None => "  holds the store lock of ".to_owned(),
    };
    let store = fit(
        &clean(store.as_str()),
        width.saturating_sub(what.len() + 16),
    );
    Line::from(vec![
        Span::styled(what, theme::ATTENTION),
        Span::raw(store),
        Span::styled("  TTL ", theme::DIM),
        Span::styled(ttl_text(app, lock.ttl_ms), theme::STRONG),
    ])
}
