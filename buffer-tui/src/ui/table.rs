//! The stores table: columns that fit, cells, the empty states, the scrollbar.

use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Paragraph, Row, Scrollbar, ScrollbarOrientation, ScrollbarState, StatefulWidget,
    Table, TableState, Widget, Wrap,
};

use super::shared::{right, ttl_text};
use super::theme;
use crate::app::{App, Column, Connection, Direction, StoreRow};
use crate::format::{age_ms, bytes, clean, count, fit};

/// The table's columns that fit in `width`, dropping the least useful first.
pub(super) fn columns_for(app: &App, width: u16) -> Vec<(Column, u16)> {
    let mut columns: Vec<(Column, u16)> = Column::ALL
        .iter()
        .filter(|c| **c != Column::Flush || app.max_age_ms().is_some())
        .filter(|c| **c != Column::Node || app.masters.is_some())
        .map(|c| (*c, column_width(*c)))
        .collect();
    // A coalescing store's records cell also holds its merged writes: `37 (1.5k)`.
    if app.visible_rows().any(|row| merged_writes(row).is_some()) {
        for (column, w) in &mut columns {
            if *column == Column::Records {
                *w = 13;
            }
        }
    }
    // Highlight symbol (2) and spacing between columns (1 each).
    let needed = |cols: &[(Column, u16)]| -> u16 {
        2 + cols.iter().map(|(_, w)| *w).sum::<u16>() + cols.len() as u16 - 1
    };
    for drop in [
        Column::Keys,
        Column::Bytes,
        Column::Node,
        Column::Flush,
        Column::Age,
    ] {
        if needed(&columns) <= width {
            break;
        }
        columns.retain(|(c, _)| *c != drop);
    }
    // The lock holder gets up to ten more columns of what is left, the name the rest.
    let rest = width.saturating_sub(needed(&columns));
    let lock_extra = (rest / 3).min(10);
    for (column, w) in &mut columns {
        match column {
            Column::Lock => *w += lock_extra,
            Column::Name => *w += rest - lock_extra,
            _ => {}
        }
    }
    columns
}

pub(super) fn column_width(column: Column) -> u16 {
    match column {
        Column::Name => 14,
        Column::Records => 8,
        Column::Bytes => 9,
        Column::Keys => 6,
        Column::Age => 6,
        Column::Flush => 6,
        Column::Lock => 17,
        Column::Batches => 8,
        Column::Node => 15,
    }
}

pub(super) fn is_numeric(column: Column) -> bool {
    !matches!(column, Column::Name | Column::Lock | Column::Node)
}

pub(super) fn render_table(app: &App, area: Rect, buf: &mut Buffer) {
    let arrow = match app.sort.direction {
        Direction::Ascending => "▲",
        Direction::Descending => "▼",
    };
    let mut title = vec![Span::styled(" Stores ", theme::STRONG)];
    title.push(Span::raw(if app.filter.is_empty() {
        format!("{} ", app.view.len())
    } else {
        format!("{} of {} ", app.view.len(), app.rows.len())
    }));
    title.push(Span::styled(
        format!("· sort {} {arrow} ", app.sort.column.title()),
        theme::DIM,
    ));
    if !app.filter.is_empty() {
        title.push(Span::styled(
            format!("· filter /{} ", fit(&app.filter, 20)),
            theme::ATTENTION,
        ));
    }
    let block = Block::bordered().title(Line::from(title));
    let inner = block.inner(area);
    block.render(area, buf);

    if app.view.is_empty() {
        render_empty(app, inner, buf);
        return;
    }

    let columns = columns_for(app, inner.width);
    let header = Row::new(columns.iter().map(|(column, width)| {
        let mut text = column.title().to_owned();
        if *column == app.sort.column {
            text.push_str(arrow);
        }
        let style = if *column == app.sort.column {
            theme::SORTED_HEADER
        } else {
            theme::STRONG
        };
        let text = fit(&text, usize::from(*width));
        let line = if is_numeric(*column) {
            Line::from(text).alignment(Alignment::Right)
        } else {
            Line::from(text)
        };
        Cell::from(line).style(style)
    }));
    let rows: Vec<Row<'_>> = app
        .visible_rows()
        .map(|row| {
            Row::new(
                columns
                    .iter()
                    .map(|(column, width)| cell(app, row, *column, usize::from(*width))),
            )
        })
        .collect();
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|(_, w)| Constraint::Length(*w))
        .collect();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(theme::SELECTED)
        .highlight_symbol("▶ ")
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always);
    let mut state =
        TableState::default().with_selected(Some(app.cursor.saturating_sub(app.offset)));
    StatefulWidget::render(table, inner, buf, &mut state);

    let page = app.page();
    if app.view.len() > page {
        let mut scroll = ScrollbarState::new(app.view.len().saturating_sub(page))
            .position(app.offset)
            .viewport_content_length(page);
        StatefulWidget::render(
            Scrollbar::new(ScrollbarOrientation::VerticalRight)
                .begin_symbol(None)
                .end_symbol(None),
            Rect {
                x: area.right().saturating_sub(1),
                y: inner.y + 1,
                width: 1,
                height: inner.height.saturating_sub(1),
            },
            buf,
            &mut scroll,
        );
    }
}

pub(super) fn render_empty(app: &App, area: Rect, buf: &mut Buffer) {
    let lines: Vec<Line<'_>> = match (&app.connection, app.rows.is_empty()) {
        (Connection::Connecting, _) => vec![Line::from(format!(
            "Connecting to {}…",
            clean(&app.address)
        ))],
        (Connection::Lost { .. }, true) => vec![
            Line::from(format!(
                "{}.",
                crate::layout::banner_lead(app).unwrap_or_default()
            )),
            Line::styled("Retrying; stores appear here once it answers.", theme::DIM),
        ],
        (_, false) => vec![
            Line::from(format!("No store matches /{}", clean(&app.filter))),
            Line::styled("Esc clears the filter.", theme::DIM),
        ],
        (Connection::Connected, true) => vec![
            Line::from(format!(
                "No live stores in namespace \"{}\": nothing pushed yet, or all persisted.",
                clean(&app.namespace)
            )),
            Line::styled(
                "Push records with Buffer::push or `buffer-persist push`; they appear here live.",
                theme::DIM,
            ),
        ],
    };
    let top = area.height.saturating_sub(lines.len() as u16) / 2;
    let area = Rect {
        y: area.y + top,
        height: area.height - top,
        ..area
    };
    Paragraph::new(lines)
        .alignment(Alignment::Center)
        .wrap(Wrap { trim: true })
        .render(area, buf);
}

pub(super) fn cell(app: &App, row: &StoreRow, column: Column, width: usize) -> Cell<'static> {
    let unknown = || Cell::from(Line::from("·").alignment(Alignment::Right)).style(theme::DIM);
    match column {
        Column::Name if row.paused => Cell::from(Line::from(vec![
            Span::styled("‖ ", theme::ATTENTION_STRONG),
            Span::raw(fit(row.name.as_str(), width.saturating_sub(2))),
        ])),
        Column::Name => Cell::from(fit(row.name.as_str(), width)),
        Column::Records => right(match (row.live, merged_writes(row)) {
            (Some(live), Some(writes)) => format!("{} ({})", count(live.records), count(writes)),
            (Some(live), None) => count(live.records),
            (None, _) => "-".into(),
        }),
        Column::Bytes => right(row.live.map_or("-".into(), |l| bytes(l.bytes))),
        Column::Keys => match row.detail.as_ref() {
            Some(detail) => right(count(detail.unique_keys)),
            None => unknown(),
        },
        Column::Age => right(row.live.map_or("-".into(), |l| age_ms(app.age_ms(&l)))),
        Column::Flush if row.paused => right("paused".into()).style(theme::ATTENTION_STRONG),
        Column::Flush => match row.live.and_then(|l| app.flush_in_ms(&l)) {
            Some(0) => right("due".into()).style(theme::ATTENTION_STRONG),
            Some(ms) => right(age_ms(ms + 999)),
            None => right("-".into()),
        },
        Column::Lock => match row.detail.as_ref().map(|d| &d.lock) {
            Some(Some(lock)) => {
                let ttl = ttl_text(app, lock.ttl_ms);
                let holder_width = width.saturating_sub(ttl.len() + 1);
                let holder = fit(&lock.holder, holder_width);
                Cell::from(Line::from(vec![
                    Span::raw(format!("{holder:<holder_width$} ")),
                    Span::styled(ttl, theme::STRONG),
                ]))
                .style(theme::ATTENTION)
            }
            Some(None) => Cell::from("-").style(theme::DIM),
            None => Cell::from("·").style(theme::DIM),
        },
        Column::Node => match row.detail.as_ref().map(|d| &d.node) {
            Some(Some(node)) => {
                let down = app
                    .masters
                    .iter()
                    .flatten()
                    .any(|master| &master.address == node && !master.is_up());
                let cell = Cell::from(fit(node, width));
                if down {
                    cell.style(theme::FAILING)
                } else {
                    cell
                }
            }
            Some(None) => Cell::from("-").style(theme::DIM),
            None => Cell::from("·").style(theme::DIM),
        },
        Column::Batches => {
            if row.failing > 0 {
                right(format!("{} ✗{}", row.prepared, row.failing)).style(theme::FAILING)
            } else if row.prepared > 0 {
                right(row.prepared.to_string()).style(theme::ACCENT)
            } else {
                right("0".into()).style(theme::DIM)
            }
        }
    }
}

/// The writes merged into a coalescing store's live rows, when the row is one (known for
/// the rows on screen).
fn merged_writes(row: &StoreRow) -> Option<u64> {
    row.detail.as_ref().and_then(|detail| detail.merged_writes)
}
