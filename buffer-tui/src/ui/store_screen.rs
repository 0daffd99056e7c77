//! The selected store in full (after Enter).

use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Widget};

use super::shared::{failure_brief, right, short_id, store_title, ttl_text};
use super::store_panel::limit_parts;
use super::theme;
use crate::app::App;
use crate::format::{age_ms, bytes, clean, count, fit};
use crate::snapshot::CoalescedFocus;

/// The selected store in full (after Enter).
pub(super) fn render_store_screen(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered()
        .title(store_title(app))
        .title_bottom(Line::styled(" Esc/Enter back · ↑↓ next store ", theme::DIM));
    let inner = block.inner(area);
    block.render(area, buf);
    let (Some(row), Some(focus)) = (app.selected_row(), &app.focus) else {
        Paragraph::new(Line::styled("loading…", theme::DIM)).render(inner, buf);
        return;
    };
    let keys_width = (inner.width / 4).clamp(12, 32);
    let [keys_area, rest] =
        Layout::horizontal([Constraint::Length(keys_width), Constraint::Min(0)]).areas(inner);

    // Left: the live counts and the keys.
    let mut lines: Vec<Line<'static>> = Vec::new();
    let coalesced = focus.coalesced.as_ref();
    if let Some(live) = row.live {
        match coalesced {
            // A coalescing store's records are its entities (one row each), each the merge
            // of many writes.
            Some(coalesced) => {
                lines.push(Line::from(format!("{} entities", count(live.records))));
                let writes = count(coalesced.view.writes);
                let merged = format!("{writes} writes merged");
                // Narrow, the word "merged" goes: the heading below says coalescing.
                lines.push(Line::from(if merged.len() + 2 <= usize::from(keys_width) {
                    merged
                } else {
                    format!("{writes} writes")
                }));
            }
            None => lines.push(Line::from(format!("{} records", count(live.records)))),
        }
        lines.push(Line::from(bytes(live.bytes)));
        lines.push(Line::from(format!("age {}", age_ms(app.age_ms(&live)))));
        if row.paused {
            lines.push(Line::styled("paused", theme::ATTENTION_STRONG));
        } else if let Some(flush) = app.flush_in_ms(&live) {
            lines.push(Line::from(if flush == 0 {
                "flush due".to_owned()
            } else {
                format!("flush in {}", age_ms(flush + 999))
            }));
        }
        if let Some(failure) = &focus.failure {
            lines.push(Line::styled(
                format!("prepare failing {}", failure_brief(app, failure)),
                theme::FAILING,
            ));
        }
    } else {
        lines.push(Line::styled("nothing live", theme::DIM));
    }
    let kw = usize::from(keys_width.saturating_sub(2));
    if let Some(coalesced) = coalesced {
        lines.push(Line::from(""));
        lines.push(Line::styled("coalescing", theme::STRONG));
        lines.extend(rule_lines(&coalesced.rules, kw));
    }
    let key_count = count(focus.key_count);
    lines.push(Line::from(""));
    lines.push(Line::styled(format!("keys ({key_count})"), theme::STRONG));
    lines.extend(focus.keys.iter().map(|k| Line::from(fit(k, kw))));
    Paragraph::new(lines).render(
        Rect {
            width: keys_area.width.saturating_sub(1),
            ..keys_area
        },
        buf,
    );

    // Right: prepared batches, then the latest records, pretty (a coalescing store: its top
    // entities, which keep their lines, heading and header included: the batches shown give
    // way on a small terminal, their count stays in the title).
    let limit_lines = limit_lines(app, focus);
    // The list's lines: its heading, its header and its entities.
    let kept_for_records: u16 = match coalesced {
        Some(coalesced) => coalesced.view.top.len().clamp(1, buffer_core::TOP_ENTITIES) as u16 + 2,
        None => 3,
    };
    let batch_rows = (focus.batches.len().clamp(1, 8) as u16).min(
        rest.height
            .saturating_sub(2 + limit_lines.len() as u16 + kept_for_records)
            .max(1),
    );
    // Under the table, each failing batch (and a store that cannot be prepared) with its
    // last error wrapped whole: a cut error cannot be acted on. They take what they need, but
    // leave the latest records a few lines.
    let mut failure_lines: Vec<Line<'static>> = Vec::new();
    let error_width = usize::from(rest.width).saturating_sub(2);
    let mut failure = |head: String, error: &str| {
        failure_lines.push(Line::styled(head, theme::FAILING));
        failure_lines.extend(
            crate::format::wrap(error, error_width)
                .into_iter()
                .map(|line| Line::from(format!("  {line}"))),
        );
    };
    if let Some(record) = &focus.failure {
        failure(
            format!(
                "store cannot be prepared {}, last error:",
                failure_brief(app, record)
            ),
            &record.last_error,
        );
    }
    for batch in &focus.batches {
        if let Some(record) = &batch.failure {
            failure(
                format!(
                    "batch {} {}, last error:",
                    short_id(&batch.id),
                    failure_brief(app, record)
                ),
                &record.last_error,
            );
        }
    }
    let failure_room = rest
        .height
        .saturating_sub(batch_rows + 2 + limit_lines.len() as u16 + kept_for_records);
    let failure_height = (failure_lines.len() as u16).min(failure_room);
    let [batches_area, failures_area, limits_area, records_area] = Layout::vertical([
        Constraint::Length(batch_rows + 2),
        Constraint::Length(failure_height),
        Constraint::Length(limit_lines.len() as u16),
        Constraint::Min(0),
    ])
    .areas(rest);
    let header = Row::new(
        [
            "Batch",
            "Records",
            "Bytes",
            "Keys",
            "Age",
            "Lock holder, TTL",
        ]
        .map(|title| {
            if is_right_aligned(title) {
                Cell::from(Line::from(title).alignment(Alignment::Right))
            } else {
                Cell::from(title)
            }
        }),
    )
    .style(theme::STRONG);
    let wide = rest.width >= 100;
    let rows = focus.batches.iter().map(|batch| {
        let (records, size, keys) = match batch.size {
            Some(s) => (count(s.records), bytes(s.bytes), count(s.keys)),
            None => ("-".into(), "emptied".into(), "-".into()),
        };
        let lock = match &batch.lock {
            Some(lock) => Cell::from(format!(
                "{} {}",
                clean(&lock.holder),
                ttl_text(app, lock.ttl.map(buffer_core::millis))
            ))
            .style(theme::ATTENTION),
            None => Cell::from("unlocked").style(theme::DIM),
        };
        let id = Cell::from(if wide {
            batch.id.to_string()
        } else {
            short_id(&batch.id)
        });
        Row::new(vec![
            match batch.failure {
                Some(_) => id.style(theme::FAILING),
                None => id,
            },
            right(records),
            right(size),
            right(keys),
            right(age_ms(app.now_ms.saturating_sub(batch.id.created_ms()))),
            lock,
        ])
    });
    let title = format!(" Prepared batches ({}) ", focus.batches.len());
    if focus.batches.is_empty() {
        Paragraph::new(Line::styled("none waiting", theme::DIM))
            .block(
                Block::new()
                    .borders(Borders::TOP)
                    .title(Span::styled(title.clone(), theme::STRONG)),
            )
            .render(batches_area, buf);
    }
    let batches = Table::new(
        rows,
        [
            Constraint::Length(if wide { 30 } else { 9 }),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .block(
        Block::new()
            .borders(Borders::TOP)
            .title(Span::styled(title, theme::STRONG)),
    );
    if !focus.batches.is_empty() {
        Widget::render(batches, batches_area, buf);
    }
    Paragraph::new(failure_lines).render(failures_area, buf);
    Paragraph::new(limit_lines).render(limits_area, buf);

    if let Some(coalesced) = coalesced {
        render_top_entities(coalesced, records_area, buf);
        return;
    }
    let mut text = Text::default();
    for record in focus.latest.iter().rev() {
        let pretty = serde_json::from_str::<serde_json::Value>(record)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| record.clone());
        let width = usize::from(records_area.width);
        for line in pretty.lines() {
            text.push_line(Line::from(fit(line, width)));
        }
    }
    if focus.latest.is_empty() {
        text.push_line(Line::styled("none live", theme::DIM));
    }
    Paragraph::new(text)
        .block(Block::new().borders(Borders::TOP).title(Span::styled(
            format!(" Latest {} records, newest first ", focus.latest.len()),
            theme::STRONG,
        )))
        .render(records_area, buf);
}

/// The store's limits, one line each with its use (`records  1520 of 2000  76%`), under a
/// ` Limits` heading; `none set` when it has none.
fn limit_lines(app: &App, focus: &crate::snapshot::FocusDetail) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(" Limits", theme::STRONG)];
    let Some(limits) = &focus.limits else {
        lines[0].spans.push(Span::styled("  none set", theme::DIM));
        return lines;
    };
    let live = app.selected_row().and_then(|row| row.live);
    for part in limit_parts(live.as_ref(), limits) {
        let mut spans = vec![Span::styled(
            format!(
                "  {:<8}{} of {}  {}%",
                part.name, part.used, part.max, part.percent
            ),
            part.style,
        )];
        if part.full {
            spans.push(Span::styled("  full: refusing pushes", theme::FAILING));
        }
        lines.push(Line::from(spans));
    }
    lines
}

pub(super) fn is_right_aligned(title: &str) -> bool {
    matches!(title, "Records" | "Bytes" | "Keys" | "Age")
}

/// A coalescing store's rules, one line each: `key  page`, `sum  views,hits`.
fn rule_lines(rules: &buffer_core::CoalesceRules, width: usize) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(fit(&format!("key   {}", rules.key), width))];
    for rule in buffer_core::MergeRule::ALL {
        let fields: Vec<&str> = rules.fields_with(rule).collect();
        if !fields.is_empty() {
            let text = format!("{:<5} {}", rule.name(), fields.join(","));
            lines.push(Line::from(fit(&text, width)));
        }
    }
    if rules.fields.is_empty() {
        lines.push(Line::styled(fit("every field: last", width), theme::DIM));
    }
    lines
}

/// An entity's key as a person reads it: a string without its quotes, an integer as is.
pub(super) fn entity_text(entity: &str) -> String {
    match serde_json::from_str::<String>(entity) {
        Ok(text) => clean(&text).into_owned(),
        Err(_) => clean(entity).into_owned(),
    }
}

/// The live top entities by the chosen summed field, largest first, in place of the latest
/// records (a coalescing store's records are its rows).
fn render_top_entities(coalesced: &CoalescedFocus, area: Rect, buf: &mut Buffer) {
    let view = &coalesced.view;
    let mut title = vec![Span::styled(
        match &view.field {
            Some(field) => format!(" Top {} entities by {} ", view.top.len(), fit(field, 30)),
            None => " Top entities ".to_owned(),
        },
        theme::STRONG,
    )];
    if coalesced.sum_fields > 1 {
        title.push(Span::styled(
            format!("· t: next of {} summed fields ", coalesced.sum_fields),
            theme::DIM,
        ));
    }
    if !view.top_exact {
        title.push(Span::styled(
            "· approximate: a sum went down ",
            theme::ATTENTION,
        ));
    }
    let block = Block::new().borders(Borders::TOP).title(Line::from(title));
    let inner = block.inner(area);
    block.render(area, buf);
    let empty = |text: &str, buf: &mut Buffer| {
        Paragraph::new(Line::styled(text.to_owned(), theme::DIM)).render(inner, buf);
    };
    if coalesced.sum_fields == 0 {
        return empty(
            "no summed field: entities are ranked by a field given --sum",
            buf,
        );
    }
    if view.field.is_none() {
        return empty("reading…", buf);
    }
    if view.top.is_empty() {
        return empty("none live", buf);
    }
    let sum_width = view
        .top
        .iter()
        .map(|t| t.sum.len())
        .chain(view.field.as_ref().map(|field| field.chars().count()))
        .max()
        .unwrap_or(0)
        .max(3) as u16;
    // The sums stand next to the names, not across the screen from them.
    let sum_width = sum_width.min(inner.width / 2);
    let entity_width = view
        .top
        .iter()
        .map(|t| crate::format::width(&entity_text(&t.entity)))
        .max()
        .unwrap_or(0)
        .max(6) as u16;
    let entity_width = entity_width.min(inner.width.saturating_sub(sum_width + 6));
    let rows = view.top.iter().enumerate().map(|(rank, entity)| {
        Row::new(vec![
            right(format!("{}", rank + 1)),
            Cell::from(fit(&entity_text(&entity.entity), usize::from(entity_width))),
            right(entity.sum.clone()),
        ])
    });
    let header = Row::new(vec![
        right("#".into()),
        Cell::from("Entity"),
        right(view.field.clone().unwrap_or_default()),
    ])
    .style(theme::STRONG);
    Widget::render(
        Table::new(
            rows,
            [
                Constraint::Length(3),
                Constraint::Length(entity_width),
                Constraint::Length(sum_width),
                Constraint::Min(0),
            ],
        )
        .header(header),
        inner,
        buf,
    );
}
