//! The help popup: every key (from the key table) and what the columns mean.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget};

use super::theme;
use crate::app::App;

pub(super) fn render_help(app: &App, area: Rect, buf: &mut Buffer) {
    // Every key from the key table (the actions only when the dashboard may act), then what
    // the columns mean.
    let mut rows: Vec<(String, &str)> = crate::keys::help_lines(app.can_act()).collect();
    rows.push((String::new(), ""));
    let columns: &[(&str, &str)] = &[
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
        ("‖ paused", "not persisted until resumed; still pushed to"),
    ];
    // The keys first: what the columns mean only when the terminal has the room.
    if rows.len() + 2 + columns.len() <= usize::from(area.height) {
        rows.extend(columns.iter().map(|(k, what)| ((*k).to_owned(), *what)));
    } else {
        rows.pop();
    }
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
                Span::styled(format!(" {k:<15} "), theme::KEY),
                Span::raw(*what),
            ])
        })
        .collect();
    Paragraph::new(lines)
        .block(Block::bordered().title(Span::styled(" Help · any key closes ", theme::STRONG)))
        .render(popup, buf);
}
