//! The header: connection, address, server facts, totals, a cluster's masters and their
//! health, the demo's counters or the announced persisters' output.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use buffer_core::{MasterHealth, MasterStatus};

use super::shared::{Part, fit_parts};
use super::theme;
use crate::app::{App, Connection};
use crate::format::{bytes, clean, count, duration_ms, fit, width};
use crate::layout::{MASTER_CELL, MASTER_GAP, MAX_MASTER_LINES, masters_per_line};

pub(super) fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let room = usize::from(area.width);
    // Each part is shown whole or left out (least useful first) at narrow widths: no word is
    // ever cut. The address takes what the fixed parts leave, up to 48 columns.
    const ALWAYS: u8 = u8::MAX;
    let connection = connection_span(app);
    let address_room = room.saturating_sub(12 + connection.width()).min(48);
    let mut first = vec![Part::new(
        ALWAYS,
        vec![
            Span::styled(" buffer ", theme::BRAND),
            Span::raw(" "),
            connection,
            Span::raw("  "),
            Span::styled(fit(&app.address, address_room), theme::STRONG),
        ],
    )];
    if let Some(server) = &app.server {
        first.push(Part::new(
            3,
            vec![Span::raw(format!("  Redis {}", clean(&server.version)))],
        ));
        first.push(Part::new(
            1,
            vec![Span::raw(format!(" {}", clean(&server.mode)))],
        ));
    }
    if let crate::app::Access::ReadOnly(_) = &app.access {
        first.push(Part::new(
            6,
            vec![Span::styled("  read-only", theme::ATTENTION)],
        ));
    }
    if let Some(masters) = &app.masters {
        let down = masters.iter().filter(|m| !m.is_up()).count();
        first.push(Part::new(
            4,
            vec![Span::styled(
                format!(
                    "  {} master{}",
                    masters.len(),
                    if masters.len() == 1 { "" } else { "s" }
                ),
                theme::DIM,
            )],
        ));
        if down > 0 {
            first.push(Part::new(
                9,
                vec![Span::styled(format!(", {down} down"), theme::FAILING)],
            ));
        }
    }

    let item = |keep: u8, label: &str, value: String| {
        Part::new(
            keep,
            vec![
                Span::styled(format!("  {label} "), theme::DIM),
                Span::raw(value),
            ],
        )
    };
    let mut second = vec![Part::new(
        ALWAYS,
        vec![
            Span::styled(" ns ", theme::DIM),
            Span::raw(clean(&app.namespace).into_owned()),
        ],
    )];
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
            item(4, "mem", memory),
            item(3, "ops/s", count(server.ops_per_sec)),
            item(1, "clients", server.clients.to_string()),
            item(8, "stores", count(app.rows.len() as u64)),
            item(8, "batches", count(app.prepared_total as u64)),
        ]);
        if app.failing_total > 0 {
            second.push(Part::new(
                9,
                vec![Span::styled(
                    format!("  failing {}", count(app.failing_total as u64)),
                    theme::FAILING,
                )],
            ));
        }
        second.push(item(
            7,
            "persisters",
            app.live_persisters().count().to_string(),
        ));
    }
    // The flush column already counts down to it.
    if let Some(max_age) = app.max_age_ms() {
        second.push(item(2, "max-age", duration_ms(max_age)));
    }
    let mut lines = vec![fit_parts(first, room), fit_parts(second, room)];
    if let Some(masters) = &app.masters {
        lines.extend(master_lines(masters, area.width));
    }
    if let (Some(demo), Some(out)) = (&app.demo, &app.demo_out) {
        lines.push(Line::from(vec![
            Span::styled(" demo ", theme::ACCENT),
            Span::raw(format!(
                "pushed {}  persisted {}  files {}",
                count(demo.pushed),
                count(demo.persisted),
                count(demo.files),
            )),
            Span::styled("  → ", theme::DIM),
            Span::raw(clean(out).into_owned()),
        ]));
    } else if !app.persisters.is_empty() {
        lines.push(persisters_line(app, room));
    }
    Paragraph::new(lines).render(area, buf);
}

/// Where the announced persisters write (each distinct output once, a database URL with its
/// password as `***`, as they announce it) and what they persisted since they started:
/// ` out postgres://app:***@db:5432/shop  persisted 12.0k in 40 batches` (records).
fn persisters_line(app: &App, room: usize) -> Line<'static> {
    let mut outputs: Vec<&str> = app.persisters.iter().map(|p| p.out.as_str()).collect();
    outputs.sort_unstable();
    outputs.dedup();
    let records: u64 = app.persisters.iter().map(|p| p.records_persisted).sum();
    let batches: u64 = app.persisters.iter().map(|p| p.batches_persisted).sum();
    let persisted = format!(
        "  persisted {} in {} batch{}",
        count(records),
        count(batches),
        if batches == 1 { "" } else { "es" }
    );
    let label = " out ";
    // The outputs take what the label and the counts leave; at narrow widths the counts go.
    let outputs = clean(&outputs.join(", ")).into_owned();
    let with_counts = room.saturating_sub(width(label) + width(&persisted));
    let (outputs, persisted) = if width(&outputs) <= with_counts {
        (outputs, persisted)
    } else {
        (
            fit(&outputs, room.saturating_sub(width(label))),
            String::new(),
        )
    };
    Line::from(vec![
        Span::styled(label, theme::DIM),
        Span::raw(outputs),
        Span::styled(persisted, theme::DIM),
    ])
}

pub(super) fn connection_span(app: &App) -> Span<'static> {
    match &app.connection {
        Connection::Connecting => Span::styled("● connecting", theme::ATTENTION),
        Connection::Connected => Span::styled("● connected", theme::GOOD),
        Connection::Lost { .. } => Span::styled("● disconnected", theme::FAILING),
    }
}

/// The masters of a cluster, a few cells per line (as many lines as the layout gave the
/// header: [`crate::layout::master_lines`]). When more masters than fit, the last cell sums up
/// the rest.
fn master_lines(masters: &[MasterStatus], area_width: u16) -> Vec<Line<'static>> {
    let per_line = masters_per_line(area_width);
    let capacity = per_line * usize::from(MAX_MASTER_LINES);
    let mut cells: Vec<Vec<Span<'static>>> = Vec::new();
    if masters.len() <= capacity {
        cells.extend(masters.iter().map(master_cell));
    } else {
        let shown = capacity - 1;
        cells.extend(masters[..shown].iter().map(master_cell));
        let rest = &masters[shown..];
        let down = rest.iter().filter(|m| !m.is_up()).count();
        let mut summary = vec![Span::raw(format!(
            "+{} more: {} up",
            rest.len(),
            rest.len() - down
        ))];
        if down > 0 {
            summary.push(Span::styled(format!(", {down} down"), theme::FAILING));
        }
        cells.push(summary);
    }
    cells
        .chunks(per_line)
        .map(|row| {
            let mut spans = vec![Span::raw(" ")];
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::raw(" ".repeat(usize::from(MASTER_GAP))));
                }
                spans.extend(fit_spans(cell, usize::from(MASTER_CELL)));
            }
            Line::from(spans)
        })
        .collect()
}

/// One master: `127.0.0.1:7000 up 1.2 MiB 412 ops/s`, or `127.0.0.1:7001 down refused`,
/// padded to [`MASTER_CELL`] columns.
fn master_cell(master: &MasterStatus) -> Vec<Span<'static>> {
    let address = Span::styled(clean(&master.address).into_owned(), theme::STRONG);
    match &master.health {
        MasterHealth::Up(info) => vec![
            address,
            Span::raw(" "),
            Span::styled("up", theme::GOOD),
            Span::raw(format!(" {}", bytes(info.used_memory))),
            Span::styled(format!(" {} ops/s", count(info.ops_per_sec)), theme::DIM),
        ],
        MasterHealth::Down(reason) => vec![
            address,
            Span::raw(" "),
            Span::styled("down", theme::FAILING),
            Span::styled(format!(" {}", clean(reason)), theme::BAD),
        ],
    }
}

/// `spans` cut to `max` columns (the last one cut gets `…`) and padded to exactly `max`.
fn fit_spans(spans: &[Span<'static>], max: usize) -> Vec<Span<'static>> {
    let mut out = Vec::new();
    let mut used = 0;
    for span in spans {
        let room = max - used;
        if room == 0 {
            break;
        }
        let text = fit(&span.content, room);
        used += width(&text);
        out.push(Span::styled(text, span.style));
    }
    if used < max {
        out.push(Span::raw(" ".repeat(max - used)));
    }
    out
}
