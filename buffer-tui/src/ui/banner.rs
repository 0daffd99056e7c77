//! The banner under the header while Redis cannot be reached.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Widget};

use super::theme;
use crate::app::{App, Connection};
use crate::format::{age_ms, fit, width, wrap};
use crate::layout::banner_lead;

/// `Redis at <address> is unreachable: <why> · retrying, attempt 3, for 12s · showing the last
/// good data`, over the one or two lines the layout gave it (two when the lead does not fit
/// on one). The parts after the lead are left out, last first, until they fit on its last
/// line, so the address and the reason always get the room.
pub(super) fn render_banner(app: &App, area: Rect, buf: &mut Buffer) {
    let (
        Connection::Lost {
            since_ms, failures, ..
        },
        Some(lead),
    ) = (&app.connection, banner_lead(app))
    else {
        return;
    };
    let room = usize::from(area.width).saturating_sub(1);
    let mut lines: Vec<String> = if area.height >= 2 {
        wrap(&lead, room)
    } else {
        vec![lead]
    };
    lines.truncate(usize::from(area.height.max(1)));
    let since = app.now_ms.saturating_sub(*since_ms);
    let mut extra = vec![format!(
        "retrying, attempt {}, for {}",
        failures.saturating_add(1),
        age_ms(since)
    )];
    if !app.rows.is_empty() {
        extra.push("showing the last good data".into());
    }
    if let Some(last) = lines.last_mut() {
        while !extra.is_empty() && width(last) + width(&extra.join(" · ")) + 3 > room {
            extra.pop();
        }
        for part in extra {
            last.push_str(" · ");
            last.push_str(&part);
        }
    }
    let lines: Vec<Line<'static>> = lines
        .iter()
        .map(|line| Line::from(format!(" {}", fit(line, room))))
        .collect();
    Paragraph::new(lines).style(theme::BANNER).render(area, buf);
}
