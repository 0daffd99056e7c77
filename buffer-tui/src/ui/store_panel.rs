//! The selected store, compact, under the table: keys, batches, latest records.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget};

use super::shared::{failure_brief, short_id, store_title, ttl_text};
use super::theme;
use crate::app::{App, LiveCounts};
use crate::format::{age_ms, bytes, clean, count, fit};
use crate::snapshot::LimitUse;

/// The selected store, compact: keys, prepared batches, latest records one per line.
pub(super) fn render_store_panel(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(store_title(app));
    let inner = block.inner(area);
    block.render(area, buf);
    let Some(row) = app.selected_row() else {
        return;
    };
    let width = usize::from(inner.width);
    let Some(focus) = &app.focus else {
        Paragraph::new(Line::styled("loading…", theme::DIM)).render(inner, buf);
        return;
    };
    let mut lines: Vec<Line<'static>> = Vec::new();
    let key_count = count(focus.key_count);
    let keys = focus
        .keys
        .iter()
        .map(|k| clean(k).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    lines.push(Line::from(vec![
        Span::styled(format!("keys ({key_count}) "), theme::STRONG),
        Span::raw(fit(&keys, width.saturating_sub(8 + key_count.len()))),
    ]));
    if let Some(limits) = &focus.limits {
        let line = limits_line(row.live.as_ref(), limits, width);
        // Cut like every other line of the panel when even the percentages do not fit.
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        if text.chars().count() <= width {
            lines.push(line);
        } else {
            lines.push(Line::styled(fit(&text, width), theme::STRONG));
        }
    }
    lines.push(Line::from(vec![
        Span::styled(format!("batches ({}) ", row.prepared), theme::STRONG),
        Span::styled(
            if focus.batches.is_empty() {
                "none waiting"
            } else {
                ""
            },
            theme::DIM,
        ),
    ]));
    let batch_lines = (inner.height as usize)
        .saturating_sub(4)
        .min(focus.batches.len())
        .min(3);
    for batch in focus.batches.iter().take(batch_lines) {
        lines.push(batch_line(app, batch, width));
    }
    if focus.batches.len() > batch_lines {
        lines.push(Line::styled(
            format!(
                "  … {} more (Enter shows all)",
                focus.batches.len() - batch_lines
            ),
            theme::DIM,
        ));
    }
    if let Some(coalesced) = &focus.coalesced {
        // A coalescing store's records are its rows: its rules and top entities say more.
        let view = &coalesced.view;
        lines.push(Line::from(vec![
            Span::styled("coalescing ", theme::STRONG),
            Span::raw(fit(
                &format!("{} · {} writes merged", coalesced.rules, count(view.writes)),
                width.saturating_sub(11),
            )),
        ]));
        if let Some(field) = &view.field {
            let head = format!("top by {}", clean(field));
            let hint = "  (Enter: all, t: next summed field)";
            let mut spans = vec![Span::styled(fit(&head, width), theme::STRONG)];
            if head.chars().count() + hint.len() <= width {
                spans.push(Span::styled(hint, theme::DIM));
            }
            lines.push(Line::from(spans));
            let room = (inner.height as usize).saturating_sub(lines.len());
            for entity in view.top.iter().take(room) {
                let name = super::store_screen::entity_text(&entity.entity);
                let sum_width = entity.sum.len();
                let name = fit(&name, width.saturating_sub(sum_width + 3));
                lines.push(Line::from(format!("  {name} {}", entity.sum)));
            }
        }
        Paragraph::new(lines).render(inner, buf);
        return;
    }
    lines.push(Line::styled("latest records", theme::STRONG));
    let room = (inner.height as usize).saturating_sub(lines.len());
    if focus.latest.is_empty() {
        lines.push(Line::styled("  none live", theme::DIM));
    }
    for record in focus.latest.iter().rev().take(room) {
        lines.push(Line::from(format!(
            "  {}",
            fit(record, width.saturating_sub(2))
        )));
    }
    Paragraph::new(lines).render(inner, buf);
}

/// One limit of a store and its use of it.
pub(super) struct LimitPart {
    /// `records`, `bytes` or `rate`.
    pub(super) name: &'static str,
    /// The use, as text (`812`, `90 KiB`, `12`).
    pub(super) used: String,
    /// The limit, as text (`1000`, `1.0 MiB`, `50/s`).
    pub(super) max: String,
    /// The use in percent of the limit.
    pub(super) percent: u64,
    /// Plain under 80 %, the attention colour from 80 %, the failing one when full (pushes
    /// that do not fit are refused then).
    pub(super) style: Style,
    /// Full: pushes that do not fit are refused.
    pub(super) full: bool,
}

/// Each limit the store has, with its use (the live records and bytes, the rate's current
/// second).
pub(super) fn limit_parts(live: Option<&LiveCounts>, limits: &LimitUse) -> Vec<LimitPart> {
    let (records, live_bytes) = live.map_or((0, 0), |l| (l.records, l.bytes));
    // (name, use, limit, value, max)
    let mut raw: Vec<(&'static str, String, String, u64, u64)> = Vec::new();
    if let Some(max) = limits.limits.max_records {
        raw.push(("records", count(records), count(max), records, max));
    }
    if let Some(max) = limits.limits.max_bytes {
        raw.push(("bytes", bytes(live_bytes), bytes(max), live_bytes, max));
    }
    if let Some(max) = limits.limits.max_rate {
        let now = limits.rate_now.unwrap_or(0);
        raw.push(("rate", count(now), format!("{}/s", count(max)), now, max));
    }
    raw.into_iter()
        .map(|(name, used, max_text, value, max)| {
            let percent = match max {
                0 => 100,
                max => value.saturating_mul(100) / max,
            };
            let full = value >= max;
            let style = if full {
                theme::FAILING
            } else if percent >= 80 {
                theme::ATTENTION
            } else {
                Style::new()
            };
            LimitPart {
                name,
                used,
                max: max_text,
                percent,
                style,
                full,
            }
        })
        .collect()
}

/// The store's use of each of its limits: `limits  records 812/1000  bytes 90 KiB/1.0 MiB
/// rate 12/50/s`, or in percent (`records 81%  bytes 9%  rate 24%`) when that does not fit.
pub(super) fn limits_line(
    live: Option<&LiveCounts>,
    limits: &LimitUse,
    width: usize,
) -> Line<'static> {
    let parts = limit_parts(live, limits);
    let full: Vec<String> = parts
        .iter()
        .map(|part| format!("{} {}/{}", part.name, part.used, part.max))
        .collect();
    let full_width: usize =
        "limits".len() + full.iter().map(|t| 2 + t.chars().count()).sum::<usize>();
    let texts: Vec<String> = if full_width <= width {
        full
    } else {
        parts
            .iter()
            .map(|part| format!("{} {}%", part.name, part.percent))
            .collect()
    };
    let mut spans = vec![Span::styled("limits", theme::STRONG)];
    for (part, text) in parts.iter().zip(texts) {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(text, part.style));
    }
    Line::from(spans)
}

pub(super) fn batch_line(
    app: &App,
    batch: &crate::snapshot::BatchDetail,
    width: usize,
) -> Line<'static> {
    let mut spans = vec![Span::raw(format!("  {} ", short_id(&batch.id)))];
    let age = age_ms(app.now_ms.saturating_sub(batch.id.created_ms()));
    match batch.size {
        // Bytes only when there is room for them and a lock holder.
        Some(size) if width >= 56 => spans.push(Span::raw(format!(
            "{:>6} rec {:>9} {:>5} ",
            count(size.records),
            bytes(size.bytes),
            age
        ))),
        Some(size) => spans.push(Span::raw(format!(
            "{:>6} rec {:>5} ",
            count(size.records),
            age
        ))),
        None => spans.push(Span::styled("emptied ", theme::DIM)),
    }
    if let Some(failure) = &batch.failure {
        spans.push(Span::styled(
            format!("{} ", failure_brief(app, failure)),
            theme::FAILING,
        ));
    }
    match &batch.lock {
        Some(lock) => {
            let ttl = ttl_text(app, lock.ttl.map(buffer_core::millis));
            let used: usize = spans.iter().map(Span::width).sum();
            let holder = fit(&lock.holder, width.saturating_sub(used + ttl.len() + 1));
            spans.push(Span::styled(format!("{holder} {ttl}"), theme::ATTENTION));
        }
        None => spans.push(Span::styled("unlocked", theme::DIM)),
    }
    Line::from(spans)
}
