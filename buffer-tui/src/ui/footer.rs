//! The footer: the keys of the current screen (from the key table), the filter input.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use super::theme;
use crate::app::{App, Mode};
use crate::format::{clean, fit};

pub(super) fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let _key = |k: &'static str| Span::styled(k, theme::KEY);
    let mut spans = match app.mode {
        Mode::Filter => vec![
            Span::styled(" filter /", theme::ATTENTION_STRONG),
            Span::raw(clean(&app.filter).into_owned()),
            Span::styled("█", theme::ATTENTION),
            Span::raw("   "),
        ],
        Mode::Normal | Mode::Help => vec![Span::raw(" ")],
    };
    for (keys, what) in crate::keys::footer_hints(app.mode, app.screen) {
        spans.push(Span::styled(keys, theme::KEY));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    if app.mode != Mode::Filter && !app.filter.is_empty() {
        spans.push(Span::styled(
            format!("filter /{} (Esc clears)", fit(&app.filter, 20)),
            theme::ATTENTION,
        ));
    }
    let line = Line::from(spans);
    Paragraph::new(line).render(area, buf);
}
