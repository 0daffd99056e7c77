//! The banner under the header while Redis cannot be reached.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::{Paragraph, Widget};

use super::theme;
use crate::app::{App, Connection};
use crate::format::{age_ms, clean, fit};

pub(super) fn render_banner(app: &App, area: Rect, buf: &mut Buffer) {
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
        .style(theme::BANNER)
        .render(area, buf);
}
