//! The action popups: the confirmation line (what will happen, exactly, from
//! `OperatorAction::confirmation`) and the limits form.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget, Wrap};

use super::theme;
use crate::app::{App, LimitsForm};
use crate::format::clean;

/// A popup `height` lines tall, as wide as `area` allows up to 76 columns, centred.
fn popup(area: Rect, height: u16) -> Rect {
    let width = area.width.min(76);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// The action waiting for confirmation, wrapped whole, and the two answers.
pub(super) fn render_confirmation(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(action) = &app.pending else { return };
    let text = clean(&action.confirmation()).into_owned();
    let inner_width = usize::from(area.width.min(76).saturating_sub(4)).max(1);
    let lines = crate::format::wrap(&text, inner_width);
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(4);
    let area = popup(area, height);
    Clear.render(area, buf);
    let mut body: Vec<Line<'_>> = lines.into_iter().map(Line::from).collect();
    body.push(Line::from(""));
    body.push(Line::from(vec![
        Span::styled("y", theme::KEY),
        Span::raw(" or "),
        Span::styled("Enter", theme::KEY),
        Span::raw(" do it   "),
        Span::styled("n", theme::KEY),
        Span::raw(" or "),
        Span::styled("Esc", theme::KEY),
        Span::raw(" cancel"),
    ]));
    Paragraph::new(body)
        .block(Block::bordered().title(Span::styled(" Confirm ", theme::ATTENTION_STRONG)))
        .render(area, buf);
}

/// The limits form: one line per limit, the field being typed in marked, empty = none.
pub(super) fn render_limits_form(app: &App, area: Rect, buf: &mut Buffer) {
    let Some(form) = &app.form else { return };
    let area = popup(area, 9);
    Clear.render(area, buf);
    let mut body: Vec<Line<'_>> = Vec::new();
    for (i, label) in LimitsForm::LABELS.iter().enumerate() {
        let focused = i == form.focus;
        let value = clean(&form.fields[i]).into_owned();
        let mut spans = vec![
            Span::styled(
                format!("{} {label:<12}", if focused { "▶" } else { " " }),
                if focused { theme::STRONG } else { theme::DIM },
            ),
            Span::raw(value.clone()),
        ];
        if focused {
            spans.push(Span::styled("█", theme::ATTENTION));
        } else if value.is_empty() {
            spans.push(Span::styled("none", theme::DIM));
        }
        body.push(Line::from(spans));
    }
    body.push(Line::from(""));
    match &form.error {
        Some(error) => body.push(Line::styled(clean(error).into_owned(), theme::FAILING)),
        None => body.push(Line::styled(
            "whole numbers; empty = no limit; all empty clears the limits",
            theme::DIM,
        )),
    }
    body.push(Line::from(vec![
        Span::styled("Enter", theme::KEY),
        Span::raw(" apply (then confirm)   "),
        Span::styled("Tab ↑↓", theme::KEY),
        Span::raw(" field   "),
        Span::styled("Esc", theme::KEY),
        Span::raw(" cancel"),
    ]));
    let title = format!(" Limits of {} ", clean(form.store.as_str()));
    Paragraph::new(body)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(Span::styled(title, theme::STRONG)))
        .render(area, buf);
}
