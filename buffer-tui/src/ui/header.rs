//! The header: connection, address, server facts, totals, the demo's counters.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use super::theme;
use crate::app::{App, Connection};
use crate::format::{bytes, clean, count, duration_ms, fit};

pub(super) fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let mut first = vec![
        Span::styled(" buffer ", theme::BRAND),
        Span::raw(" "),
        connection_span(app),
        Span::raw("  "),
        Span::styled(fit(&app.address, 48), theme::STRONG),
    ];
    if let Some(server) = &app.server {
        first.push(Span::raw(format!(
            "  Redis {} {}",
            clean(&server.version),
            clean(&server.mode)
        )));
    }

    let mut second = vec![
        Span::styled(" ns ", theme::DIM),
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
            Span::styled("  mem ", theme::DIM),
            Span::raw(memory),
            Span::styled("  ops/s ", theme::DIM),
            Span::raw(count(server.ops_per_sec)),
            Span::styled("  clients ", theme::DIM),
            Span::raw(server.clients.to_string()),
            Span::styled("  stores ", theme::DIM),
            Span::raw(count(app.rows.len() as u64)),
            Span::styled("  batches ", theme::DIM),
            Span::raw(count(app.prepared_total as u64)),
        ]);
        if app.failing_total > 0 {
            second.push(Span::styled(
                format!("  failing {}", count(app.failing_total as u64)),
                theme::FAILING,
            ));
        }
    }
    if app.server.is_some() {
        second.push(Span::styled("  persisters ", theme::DIM));
        second.push(Span::raw(app.persisters.len().to_string()));
    }
    if let Some(max_age) = app.max_age_ms() {
        second.push(Span::styled("  max-age ", theme::DIM));
        second.push(Span::raw(duration_ms(max_age)));
    }
    let mut lines = vec![Line::from(first), Line::from(second)];
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
    }
    Paragraph::new(lines).render(area, buf);
}

pub(super) fn connection_span(app: &App) -> Span<'static> {
    match &app.connection {
        Connection::Connecting => Span::styled("● connecting", theme::ATTENTION),
        Connection::Connected => Span::styled("● connected", theme::GOOD),
        Connection::Lost { .. } => Span::styled("● disconnected", theme::FAILING),
    }
}
