//! Push and persist rates with their sparklines.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Sparkline, Widget};

use super::theme;
use crate::app::App;
use crate::format::count;

pub(super) fn render_rates(app: &App, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered().title(Line::from(Span::styled(
        " Rates, records/s ",
        theme::STRONG,
    )));
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
    let label = |name: &str, now: Option<u64>, style: Style| {
        let value = now.map_or("–".to_owned(), count);
        Line::from(vec![
            Span::styled(format!("{name:<8}"), theme::strong(style)),
            Span::raw(format!("{value:>7}/s")),
        ])
    };
    Paragraph::new(label("push", app.rates.push_now(), theme::PUSH)).render(rows[0], buf);
    Paragraph::new(label("persist", app.rates.persist_now(), theme::PERSIST)).render(rows[2], buf);
    for (samples, area, style) in [
        (&app.rates.push, rows[1], theme::PUSH),
        (&app.rates.persist, rows[3], theme::PERSIST),
    ] {
        if area.height == 0 {
            continue;
        }
        // The newest samples, right-aligned so the line grows from the right.
        let take = usize::from(area.width).min(samples.len());
        let data: Vec<u64> = samples.iter().skip(samples.len() - take).copied().collect();
        let offset = area.width.saturating_sub(take as u16);
        Sparkline::default().data(&data).style(style).render(
            Rect {
                x: area.x + offset,
                width: area.width - offset,
                ..area
            },
            buf,
        );
    }
}
