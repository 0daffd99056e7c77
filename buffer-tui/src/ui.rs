//! Drawing the [`App`]: a pure function of the state, so it is tested with `TestBackend`.
//!
//! Colours are the terminal's named ANSI colours and modifiers only (no fixed greys, no
//! painted backgrounds except the disconnected banner and the selection, which is reversed),
//! so the dashboard reads on dark and light themes alike.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Scrollbar, ScrollbarOrientation, ScrollbarState,
    Sparkline, StatefulWidget, Table, TableState, Widget, Wrap,
};

use buffer_core::EventKind;

use crate::app::{App, Column, Connection, Direction, EventFeed, Mode, Screen, StoreRow};
use crate::format::{age_ms, bytes, clean, count, duration_ms, fit};

/// Smaller than this, the dashboard only says so.
const MIN_WIDTH: u16 = 40;
const MIN_HEIGHT: u16 = 10;

/// Draws the whole dashboard.
pub fn render(app: &App, frame: &mut Frame<'_>) {
    frame.render_widget(app, frame.area());
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            Paragraph::new(format!(
                "Terminal too small ({}x{}); buffer-tui needs {MIN_WIDTH}x{MIN_HEIGHT}. q quits.",
                area.width, area.height
            ))
            .wrap(Wrap { trim: true })
            .render(area, buf);
            return;
        }
        let areas = layout(self, area);
        render_header(self, areas.header, buf);
        if let Some(banner) = areas.banner {
            render_banner(self, banner, buf);
        }
        match self.screen {
            Screen::Table => {
                render_table(self, areas.table, buf);
                if let Some(bottom) = areas.bottom {
                    render_bottom(self, bottom, buf);
                }
            }
            Screen::Store => render_store_screen(self, areas.main, buf),
        }
        render_footer(self, areas.footer, buf);
        if self.mode == Mode::Help {
            render_help(area, buf);
        }
    }
}

/// Where each part goes.
struct Areas {
    header: Rect,
    banner: Option<Rect>,
    /// Everything between the header (and banner) and the footer.
    main: Rect,
    table: Rect,
    bottom: Option<Rect>,
    footer: Rect,
}

fn has_banner(app: &App) -> bool {
    matches!(app.connection, Connection::Lost { .. })
}

fn layout(app: &App, area: Rect) -> Areas {
    let banner_height = u16::from(has_banner(app));
    let header_height = if app.demo.is_some() { 3 } else { 2 };
    let [header, banner, main, footer] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(banner_height),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    // The bottom panels take about two fifths, when there is room for them at all.
    let bottom_height = if main.height >= 16 {
        (main.height * 2 / 5).clamp(8, 18)
    } else {
        0
    };
    let [table, bottom] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(bottom_height)]).areas(main);
    Areas {
        header,
        banner: (banner_height > 0).then_some(banner),
        main,
        table,
        bottom: (bottom_height > 0).then_some(bottom),
        footer,
    }
}

/// How many store rows the table shows at the app's terminal size.
pub(crate) fn table_capacity(app: &App) -> usize {
    let (width, height) = app.size;
    let areas = layout(app, Rect::new(0, 0, width, height));
    // Borders and the header row.
    usize::from(areas.table.height.saturating_sub(3))
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let mut first = vec![
        Span::styled(" buffer ", Style::new().bold().reversed()),
        Span::raw(" "),
        connection_span(app),
        Span::raw("  "),
        Span::styled(fit(&app.address, 48), Style::new().bold()),
    ];
    if let Some(server) = &app.server {
        first.push(Span::raw(format!(
            "  Redis {} {}",
            clean(&server.version),
            clean(&server.mode)
        )));
    }

    let mut second = vec![
        Span::styled(" ns ", dim()),
        Span::raw(clean(&app.namespace).into_owned()),
    ];
    if let Some(server) = &app.server {
        let memory = if server.maxmemory > 0 {
            format!(
                "{} / {}",
                bytes(server.used_memory),
                bytes(server.maxmemory)
            )
        } else {
            bytes(server.used_memory)
        };
        second.extend([
            Span::styled("  mem ", dim()),
            Span::raw(memory),
            Span::styled("  ops/s ", dim()),
            Span::raw(count(server.ops_per_sec)),
            Span::styled("  clients ", dim()),
            Span::raw(server.clients.to_string()),
            Span::styled("  stores ", dim()),
            Span::raw(count(app.rows.len() as u64)),
            Span::styled("  batches ", dim()),
            Span::raw(count(app.prepared_total as u64)),
        ]);
        if app.failing_total > 0 {
            second.push(Span::styled(
                format!("  failing {}", count(app.failing_total as u64)),
                failing_style(),
            ));
        }
    }
    if app.server.is_some() {
        second.push(Span::styled("  persisters ", dim()));
        second.push(Span::raw(app.persisters.len().to_string()));
    }
    if let Some(max_age) = app.max_age_ms() {
        second.push(Span::styled("  max-age ", dim()));
        second.push(Span::raw(duration_ms(max_age)));
    }
    let mut lines = vec![Line::from(first), Line::from(second)];
    if let (Some(demo), Some(out)) = (&app.demo, &app.demo_out) {
        lines.push(Line::from(vec![
            Span::styled(" demo ", Style::new().fg(Color::Magenta).bold()),
            Span::raw(format!(
                "pushed {}  persisted {}  files {}",
                count(demo.pushed),
                count(demo.persisted),
                count(demo.files),
            )),
            Span::styled("  → ", dim()),
            Span::raw(clean(out).into_owned()),
        ]));
    }
    Paragraph::new(lines).render(area, buf);
}

fn connection_span(app: &App) -> Span<'static> {
    match &app.connection {
        Connection::Connecting => Span::styled("● connecting", Style::new().fg(Color::Yellow)),
        Connection::Connected => Span::styled("● connected", Style::new().fg(Color::Green)),
        Connection::Lost { .. } => {
            Span::styled("● disconnected", Style::new().fg(Color::Red).bold())
        }
    }
}

fn render_banner(app: &App, area: Rect, buf: &mut Buffer) {
    let Connection::Lost {
        error,
        since_ms,
        failures,
    } = &app.connection
    else {
        return;
    };
    let since = app.now_ms.saturating_sub(*since_ms);
    let text = format!(
        " Redis unreachable for {}: {} · reconnecting (attempt {}) · showing the last good data ",
        age_ms(since),
        clean(error),
        failures.saturating_add(1)
    );
    Paragraph::new(fit(&text, usize::from(area.width)))
        .style(Style::new().fg(Color::White).bg(Color::Red).bold())
        .render(area, buf);
}

/// The table's columns that fit in `width`, dropping the least useful first.
fn columns_for(app: &App, width: u16) -> Vec<(Column, u16)> {
    let mut columns: Vec<(Column, u16)> = Column::ALL
        .iter()
        .filter(|c| **c != Column::Flush || app.max_age_ms().is_some())
        .map(|c| (*c, column_width(*c)))
        .collect();
    // Highlight symbol (2) and spacing between columns (1 each).
    let needed = |cols: &[(Column, u16)]| -> u16 {
        2 + cols.iter().map(|(_, w)| *w).sum::<u16>() + cols.len() as u16 - 1
    };
    for drop in [Column::Keys, Column::Bytes, Column::Flush, Column::Age] {
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

fn column_width(column: Column) -> u16 {
    match column {
        Column::Name => 14,
        Column::Records => 8,
        Column::Bytes => 9,
        Column::Keys => 6,
        Column::Age => 6,
        Column::Flush => 6,
        Column::Lock => 17,
        Column::Batches => 8,
    }
}

fn is_numeric(column: Column) -> bool {
    !matches!(column, Column::Name | Column::Lock)
}

fn render_table(app: &App, area: Rect, buf: &mut Buffer) {
    let arrow = match app.sort.direction {
        Direction::Ascending => "▲",
        Direction::Descending => "▼",
    };
    let mut title = vec![Span::styled(" Stores ", Style::new().bold())];
    title.push(Span::raw(if app.filter.is_empty() {
        format!("{} ", app.view.len())
    } else {
        format!("{} of {} ", app.view.len(), app.rows.len())
    }));
    title.push(Span::styled(
        format!("· sort {} {arrow} ", app.sort.column.title()),
        dim(),
    ));
    if !app.filter.is_empty() {
        title.push(Span::styled(
            format!("· filter /{} ", fit(&app.filter, 20)),
            Style::new().fg(Color::Yellow),
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
            Style::new().bold().underlined()
        } else {
            Style::new().bold()
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
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD))
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

fn render_empty(app: &App, area: Rect, buf: &mut Buffer) {
    let lines: Vec<Line<'_>> = match (&app.connection, app.rows.is_empty()) {
        (Connection::Connecting, _) => vec![Line::from(format!(
            "Connecting to {}…",
            clean(&app.address)
        ))],
        (Connection::Lost { .. }, true) => vec![Line::from(
            "Redis cannot be reached yet; retrying. Stores appear here once it answers.",
        )],
        (_, false) => vec![
            Line::from(format!("No store matches /{}", clean(&app.filter))),
            Line::styled("Esc clears the filter.", dim()),
        ],
        (Connection::Connected, true) => vec![
            Line::from(format!(
                "No live stores in namespace \"{}\": nothing pushed yet, or all persisted.",
                clean(&app.namespace)
            )),
            Line::styled(
                "Push records with Buffer::push or `buffer-persist push`; they appear here live.",
                dim(),
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

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).alignment(Alignment::Right))
}

fn cell(app: &App, row: &StoreRow, column: Column, width: usize) -> Cell<'static> {
    let unknown = || Cell::from(Line::from("·").alignment(Alignment::Right)).style(dim());
    match column {
        Column::Name => Cell::from(fit(row.name.as_str(), width)),
        Column::Records => right(row.live.map_or("-".into(), |l| count(l.records))),
        Column::Bytes => right(row.live.map_or("-".into(), |l| bytes(l.bytes))),
        Column::Keys => match row.detail.as_ref() {
            Some(detail) => right(count(detail.unique_keys)),
            None => unknown(),
        },
        Column::Age => right(row.live.map_or("-".into(), |l| age_ms(app.age_ms(&l)))),
        Column::Flush => match row.live.and_then(|l| app.flush_in_ms(&l)) {
            Some(0) => right("due".into()).style(Style::new().fg(Color::Yellow).bold()),
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
                    Span::styled(ttl, Style::new().bold()),
                ]))
                .style(Style::new().fg(Color::Yellow))
            }
            Some(None) => Cell::from("-").style(dim()),
            None => Cell::from("·").style(dim()),
        },
        Column::Batches => {
            if row.failing > 0 {
                right(format!("{} ✗{}", row.prepared, row.failing)).style(failing_style())
            } else if row.prepared > 0 {
                right(row.prepared.to_string()).style(Style::new().fg(Color::Magenta).bold())
            } else {
                right("0".into()).style(dim())
            }
        }
    }
}

fn failing_style() -> Style {
    Style::new().fg(Color::Red).bold()
}

/// A failure in few columns: `✗<attempts>` and when it is retried.
fn failure_brief(app: &App, record: &buffer_core::FailureRecord) -> String {
    match record.next_retry_ms.saturating_sub(app.now_ms) {
        0 => format!("✗{} retry due", record.attempts),
        ms => format!("✗{} retry {}", record.attempts, age_ms(ms + 999)),
    }
}

/// A lock's remaining TTL, counted down since the poll that read it.
fn ttl_text(app: &App, ttl_ms: Option<u64>) -> String {
    match ttl_ms.map(|ttl| app.remaining_ttl(ttl)) {
        None => "∞".into(),
        Some(0) => "expired".into(),
        Some(ms) => duration_ms(ms),
    }
}

/// A batch id in few columns: the end of its random part, which is what tells batches apart
/// (the age column tells the time).
fn short_id(id: &buffer_core::BatchId) -> String {
    let id = id.to_string();
    let tail = id.len().saturating_sub(8);
    format!("…{}", &id[tail..])
}

fn render_bottom(app: &App, area: Rect, buf: &mut Buffer) {
    let [store, side] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    render_store_panel(app, store, buf);
    let rates_height = if side.height >= 12 { 6 } else { 4 };
    let [rates, events] =
        Layout::vertical([Constraint::Length(rates_height), Constraint::Min(0)]).areas(side);
    render_rates(app, rates, buf);
    render_events(app, events, buf);
}

fn store_title(app: &App) -> Line<'static> {
    match app.selected_row() {
        Some(row) => Line::from(vec![
            Span::raw(" "),
            Span::styled(fit(row.name.as_str(), 40), Style::new().bold()),
            Span::raw(" "),
        ]),
        None => Line::from(" No store selected "),
    }
}

/// The selected store, compact: keys, prepared batches, latest records one per line.
fn render_store_panel(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(store_title(app));
    let inner = block.inner(area);
    block.render(area, buf);
    let Some(row) = app.selected_row() else {
        return;
    };
    let width = usize::from(inner.width);
    let Some(focus) = &app.focus else {
        Paragraph::new(Line::styled("loading…", dim())).render(inner, buf);
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
        Span::styled(format!("keys ({key_count}) "), Style::new().bold()),
        Span::raw(fit(&keys, width.saturating_sub(8 + key_count.len()))),
    ]));
    lines.push(Line::from(vec![
        Span::styled(format!("batches ({}) ", row.prepared), Style::new().bold()),
        Span::styled(
            if focus.batches.is_empty() {
                "none waiting"
            } else {
                ""
            },
            dim(),
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
            dim(),
        ));
    }
    lines.push(Line::styled("latest records", Style::new().bold()));
    let room = (inner.height as usize).saturating_sub(lines.len());
    if focus.latest.is_empty() {
        lines.push(Line::styled("  none live", dim()));
    }
    for record in focus.latest.iter().rev().take(room) {
        lines.push(Line::from(format!(
            "  {}",
            fit(record, width.saturating_sub(2))
        )));
    }
    Paragraph::new(lines).render(inner, buf);
}

fn batch_line(app: &App, batch: &crate::snapshot::BatchDetail, width: usize) -> Line<'static> {
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
        None => spans.push(Span::styled("emptied ", dim())),
    }
    if let Some(failure) = &batch.failure {
        spans.push(Span::styled(
            format!("{} ", failure_brief(app, failure)),
            failing_style(),
        ));
    }
    match &batch.lock {
        Some(lock) => {
            let ttl = ttl_text(app, lock.ttl_ms);
            let used: usize = spans.iter().map(Span::width).sum();
            let holder = fit(&lock.holder, width.saturating_sub(used + ttl.len() + 1));
            spans.push(Span::styled(
                format!("{holder} {ttl}"),
                Style::new().fg(Color::Yellow),
            ));
        }
        None => spans.push(Span::styled("unlocked", dim())),
    }
    Line::from(spans)
}

fn render_rates(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(Line::from(" Rates, records/s ".bold()));
    let inner = block.inner(area);
    block.render(area, buf);
    let spark_height = if inner.height >= 4 {
        inner.height / 2 - 1
    } else {
        0
    };
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(spark_height),
        Constraint::Length(1),
        Constraint::Length(spark_height),
    ])
    .split(inner);
    let label = |name: &str, now: Option<u64>, color: Color| {
        let value = now.map_or("–".to_owned(), count);
        Line::from(vec![
            Span::styled(format!("{name:<8}"), Style::new().fg(color).bold()),
            Span::raw(format!("{value:>7}/s")),
        ])
    };
    Paragraph::new(label("push", app.rates.push_now(), Color::Cyan)).render(rows[0], buf);
    Paragraph::new(label("persist", app.rates.persist_now(), Color::Green)).render(rows[2], buf);
    for (samples, area, color) in [
        (&app.rates.push, rows[1], Color::Cyan),
        (&app.rates.persist, rows[3], Color::Green),
    ] {
        if area.height == 0 {
            continue;
        }
        // The newest samples, right-aligned so the line grows from the right.
        let take = usize::from(area.width).min(samples.len());
        let data: Vec<u64> = samples.iter().skip(samples.len() - take).copied().collect();
        let offset = area.width.saturating_sub(take as u16);
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(color))
            .render(
                Rect {
                    x: area.x + offset,
                    width: area.width - offset,
                    ..area
                },
                buf,
            );
    }
}

fn event_style(kind: EventKind) -> (&'static str, Style) {
    match kind {
        EventKind::Prepared => ("prepared", Style::new().fg(Color::Cyan)),
        EventKind::Persisted => ("persisted", Style::new().fg(Color::Green)),
        EventKind::Failed => ("failed", Style::new().fg(Color::Red).bold()),
        EventKind::Recovered => ("recovered", Style::new().fg(Color::Yellow)),
    }
}

fn render_events(app: &App, area: Rect, buf: &mut Buffer) {
    let feed = match &app.feed {
        EventFeed::Connecting => Span::styled("subscribing", Style::new().fg(Color::Yellow)),
        EventFeed::Live => Span::styled("live", Style::new().fg(Color::Green)),
        EventFeed::Lost(_) => Span::styled("lost, retrying", Style::new().fg(Color::Red)),
    };
    let block = Block::bordered().title(Line::from(vec![
        Span::styled(" Persister events ", Style::new().bold()),
        feed,
        Span::raw(" "),
    ]));
    let inner = block.inner(area);
    block.render(area, buf);
    let width = usize::from(inner.width);
    if app.events.is_empty() {
        Paragraph::new(Line::styled("none yet", dim())).render(inner, buf);
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
                Span::styled(head, dim()),
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
                    spans.push(Span::styled(format!(" {detail}"), dim()));
                }
            }
            Line::from(spans)
        })
        .collect();
    Paragraph::new(lines).render(inner, buf);
}

/// The end of `text` in at most `max` columns: for file paths, the end is what differs.
fn fit_tail(text: &str, max: usize) -> String {
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

/// The selected store in full (after Enter).
fn render_store_screen(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered()
        .title(store_title(app))
        .title_bottom(Line::styled(" Esc/Enter back · ↑↓ next store ", dim()));
    let inner = block.inner(area);
    block.render(area, buf);
    let (Some(row), Some(focus)) = (app.selected_row(), &app.focus) else {
        Paragraph::new(Line::styled("loading…", dim())).render(inner, buf);
        return;
    };
    let keys_width = (inner.width / 4).clamp(12, 32);
    let [keys_area, rest] =
        Layout::horizontal([Constraint::Length(keys_width), Constraint::Min(0)]).areas(inner);

    // Left: the live counts and the keys.
    let mut lines: Vec<Line<'static>> = Vec::new();
    if let Some(live) = row.live {
        lines.push(Line::from(format!("{} records", count(live.records))));
        lines.push(Line::from(bytes(live.bytes)));
        lines.push(Line::from(format!("age {}", age_ms(app.age_ms(&live)))));
        if let Some(flush) = app.flush_in_ms(&live) {
            lines.push(Line::from(if flush == 0 {
                "flush due".to_owned()
            } else {
                format!("flush in {}", age_ms(flush + 999))
            }));
        }
        if let Some(failure) = &focus.failure {
            lines.push(Line::styled(
                format!("prepare failing {}", failure_brief(app, failure)),
                failing_style(),
            ));
        }
    } else {
        lines.push(Line::styled("nothing live", dim()));
    }
    let key_count = count(focus.key_count);
    lines.push(Line::from(""));
    lines.push(Line::styled(
        format!("keys ({key_count})"),
        Style::new().bold(),
    ));
    let kw = usize::from(keys_width.saturating_sub(2));
    lines.extend(focus.keys.iter().map(|k| Line::from(fit(k, kw))));
    Paragraph::new(lines).render(
        Rect {
            width: keys_area.width.saturating_sub(1),
            ..keys_area
        },
        buf,
    );

    // Right: prepared batches, then the latest records, pretty.
    let batch_rows = focus.batches.len().clamp(1, 8) as u16;
    // Under the table, one line per failing batch with its last error, at full width.
    let failure_lines: Vec<Line<'static>> = focus
        .batches
        .iter()
        .filter_map(|batch| {
            let failure = batch.failure.as_ref()?;
            let head = format!("{} {}: ", short_id(&batch.id), failure_brief(app, failure));
            let room = usize::from(rest.width).saturating_sub(crate::format::width(&head));
            Some(Line::from(vec![
                Span::styled(head, failing_style()),
                Span::raw(fit(&failure.last_error, room)),
            ]))
        })
        .take(4)
        .collect();
    let [batches_area, failures_area, records_area] = Layout::vertical([
        Constraint::Length(batch_rows + 2),
        Constraint::Length(failure_lines.len() as u16),
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
    .style(Style::new().bold());
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
                ttl_text(app, lock.ttl_ms)
            ))
            .style(Style::new().fg(Color::Yellow)),
            None => Cell::from("unlocked").style(dim()),
        };
        let id = Cell::from(if wide {
            batch.id.to_string()
        } else {
            short_id(&batch.id)
        });
        Row::new(vec![
            match batch.failure {
                Some(_) => id.style(failing_style()),
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
        Paragraph::new(Line::styled("none waiting", dim()))
            .block(
                Block::new()
                    .borders(Borders::TOP)
                    .title(title.clone().bold()),
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
    .block(Block::new().borders(Borders::TOP).title(title.bold()));
    if !focus.batches.is_empty() {
        Widget::render(batches, batches_area, buf);
    }
    Paragraph::new(failure_lines).render(failures_area, buf);

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
        text.push_line(Line::styled("none live", dim()));
    }
    Paragraph::new(text)
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!(" Latest {} records, newest first ", focus.latest.len()).bold()),
        )
        .render(records_area, buf);
}

fn is_right_aligned(title: &str) -> bool {
    matches!(title, "Records" | "Bytes" | "Keys" | "Age")
}

fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let key = |k: &'static str| Span::styled(k, Style::new().bold().fg(Color::Cyan));
    let line = match app.mode {
        Mode::Filter => Line::from(vec![
            Span::styled(" filter /", Style::new().fg(Color::Yellow).bold()),
            Span::raw(clean(&app.filter).into_owned()),
            Span::styled("█", Style::new().fg(Color::Yellow)),
            Span::raw("   "),
            key("Enter"),
            Span::raw(" keep  "),
            key("Esc"),
            Span::raw(" clear"),
        ]),
        Mode::Normal | Mode::Help => {
            let mut spans = vec![Span::raw(" ")];
            let hints: &[(&'static str, &'static str)] = match app.screen {
                Screen::Table => &[
                    ("q", "quit"),
                    ("↑↓ jk", "move"),
                    ("Enter", "open"),
                    ("/", "filter"),
                    ("s", "sort"),
                    ("S", "reverse"),
                    ("?", "help"),
                ],
                Screen::Store => &[
                    ("q", "quit"),
                    ("Esc", "back"),
                    ("↑↓ jk", "next store"),
                    ("?", "help"),
                ],
            };
            for (k, what) in hints {
                spans.push(key(k));
                spans.push(Span::raw(format!(" {what}  ")));
            }
            if !app.filter.is_empty() {
                spans.push(Span::styled(
                    format!("filter /{} (Esc clears)", fit(&app.filter, 20)),
                    Style::new().fg(Color::Yellow),
                ));
            }
            Line::from(spans)
        }
    };
    Paragraph::new(line).render(area, buf);
}

fn render_help(area: Rect, buf: &mut Buffer) {
    let rows: &[(&str, &str)] = &[
        ("↑ ↓  j k", "move the selection"),
        ("PgUp PgDn  g G", "page up, page down, first, last"),
        ("Enter", "open the selected store: keys, batches, records"),
        ("Esc", "back; clears the filter"),
        ("/", "filter stores by name (Enter keeps, Esc clears)"),
        ("s  S", "sort by the next column; reverse the order"),
        ("?", "this help"),
        ("q  Ctrl-C", "quit"),
        ("", ""),
        (
            "Keys, Lock",
            "read for the rows on screen only ('·' = not read yet)",
        ),
        (
            "Flush",
            "time until the persister's --max-age flushes the store",
        ),
        ("Batches", "prepared batches waiting to be written"),
        ("✗n", "n failing: retried later, waiting longer each time"),
    ];
    let width = 74.min(area.width);
    let height = (rows.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    Clear.render(popup, buf);
    let lines: Vec<Line<'_>> = rows
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<15} "), Style::new().bold().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    Paragraph::new(lines)
        .block(Block::bordered().title(" Help · any key closes ".bold()))
        .render(popup, buf);
}

#[cfg(test)]
mod tests;
