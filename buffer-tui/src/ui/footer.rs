//! The footer: the keys of the current screen (from the key table), the filter input.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Paragraph, Widget};

use super::shared::{Part, fit_parts};
use super::theme;
use crate::app::{App, Mode};
use crate::format::{clean, fit};

/// The hints in the key table's order; on a narrow terminal the last ones are left out
/// first, never cut, but `? help` (which lists them all) and the filter stay.
pub(super) fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let mut parts = vec![match app.mode {
        Mode::Filter => Part::new(
            u8::MAX,
            vec![
                Span::styled(" filter /", theme::ATTENTION_STRONG),
                Span::raw(clean(&app.filter).into_owned()),
                Span::styled("█", theme::ATTENTION),
                Span::raw("   "),
            ],
        ),
        Mode::Confirm => Part::new(
            u8::MAX,
            vec![Span::styled(" Confirm? ", theme::ATTENTION_STRONG)],
        ),
        Mode::Normal | Mode::Help | Mode::Form => Part::new(u8::MAX, vec![Span::raw(" ")]),
    }];
    // What the last action did, for a while, before the hints (which make room for it).
    if let Some(notice) = app.current_notice() {
        let style = if notice.failed {
            theme::FAILING
        } else {
            theme::GOOD
        };
        let room = usize::from(area.width).saturating_sub(12);
        parts.push(Part::new(
            u8::MAX - 1,
            vec![
                Span::styled(fit(&clean(&notice.text), room), style),
                Span::raw("  "),
            ],
        ));
    }
    let hints = crate::keys::footer_hints(app.mode, app.screen, app.can_act());
    for (i, (keys, what)) in hints.enumerate() {
        let keep = if keys == "?" {
            u8::MAX - 1
        } else {
            200u8.saturating_sub(u8::try_from(i).unwrap_or(200))
        };
        parts.push(Part::new(
            keep,
            vec![
                Span::styled(keys, theme::KEY),
                Span::raw(format!(" {what}  ")),
            ],
        ));
    }
    if app.mode != Mode::Filter && !app.filter.is_empty() {
        parts.push(Part::new(
            u8::MAX - 1,
            vec![Span::styled(
                format!("filter /{} (Esc clears)", fit(&app.filter, 20)),
                theme::ATTENTION,
            )],
        ));
    }
    Paragraph::new(fit_parts(parts, usize::from(area.width))).render(area, buf);
}
