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
/// Lines a coalescing store's panel shows above its top entities: keys, batches, rules and
/// the ranking's heading.
const COALESCED_HEAD_LINES: u16 = 4;

/// Whether the bottom `area` is too short for the selected coalescing store's top entities in
/// one column beside the rates: then its panel takes the whole width.
pub(super) fn wants_full_width(app: &App, area: Rect) -> bool {
    let Some(coalesced) = app.focus.as_ref().and_then(|f| f.coalesced.as_ref()) else {
        return false;
    };
    let wanted = COALESCED_HEAD_LINES + coalesced.view.top.len().max(1) as u16 + 2;
    area.height < wanted
}

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
    // Short, a coalescing store's panel gives its top entities the lines of its keys (its
    // field names: the rules say more, Enter lists them) and of its batches (counted).
    let short_coalesced = focus.coalesced.as_ref().is_some_and(|coalesced| {
        inner.height < COALESCED_HEAD_LINES + coalesced.view.top.len() as u16
    });
    let key_count = count(focus.key_count);
    let keys = focus
        .keys
        .iter()
        .map(|k| clean(k).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    if !short_coalesced {
        lines.push(Line::from(vec![
            Span::styled(format!("keys ({key_count}) "), theme::STRONG),
            Span::raw(fit(&keys, width.saturating_sub(8 + key_count.len()))),
        ]));
    }
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
    let batch_lines = if short_coalesced {
        0
    } else {
        (inner.height as usize)
            .saturating_sub(4)
            .min(focus.batches.len())
            .min(3)
    };
    for batch in focus.batches.iter().take(batch_lines) {
        lines.push(batch_line(app, batch, width));
    }
    if focus.batches.len() > batch_lines && !short_coalesced {
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
            lines.extend(top_columns(&view.top, room, width));
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

/// The top entities on `rows` lines of `width` columns, ranked (`1 /home 950`): one column
/// when they fit, else as many columns as they need (filled top to bottom, then left to
/// right) while each keeps room for its rank, its sum and a few characters of its name;
/// what does not fit is left out.
fn top_columns(top: &[buffer_core::TopEntity], rows: usize, width: usize) -> Vec<Line<'static>> {
    if rows == 0 || top.is_empty() {
        return Vec::new();
    }
    let cells: Vec<(String, &str)> = top
        .iter()
        .map(|t| (super::store_screen::entity_text(&t.entity), t.sum.as_str()))
        .collect();
    let rank_width = top.len().to_string().len();
    let sum_width = cells.iter().map(|(_, sum)| sum.len()).max().unwrap_or(0);
    let name_width = cells
        .iter()
        .map(|(name, _)| crate::format::width(name))
        .max()
        .unwrap_or(0);
    // "  " + rank + " " + name + " " + sum, two spaces between columns.
    let fixed = 2 + rank_width + 1 + 1 + sum_width;
    let columns = top.len().div_ceil(rows);
    let fitting = (width / (fixed + 6).max(1)).max(1);
    let columns = columns.min(fitting);
    let column_width = width / columns;
    let name_room = column_width.saturating_sub(fixed).min(name_width).max(1);
    let mut lines = vec![String::new(); rows.min(top.len())];
    for (i, (name, sum)) in cells.iter().enumerate().take(rows * columns) {
        let line = &mut lines[i % rows];
        let cell = format!(
            "  {:>rank_width$} {:<name_room$} {:>sum_width$}",
            i + 1,
            fit(name, name_room),
            sum
        );
        line.push_str(&cell);
        // Pad to the next column.
        let pad = column_width.saturating_sub(crate::format::width(&cell));
        line.push_str(&" ".repeat(pad));
    }
    lines
        .into_iter()
        .map(|line| Line::from(line.trim_end().to_owned()))
        .collect()
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
