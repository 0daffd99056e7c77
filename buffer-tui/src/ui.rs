//! Drawing the [`App`]: a pure function of the state, so it is tested with `TestBackend`.
//!
//! `layout` says where each part goes; each panel has its module here and takes its colours
//! from `theme`. Rendering reads the state and never changes it.

mod actions;
mod banner;
mod events;
mod footer;
mod header;
mod help;
mod persisters;
mod rates;
mod shared;
mod store_panel;
mod store_screen;
mod table;
pub(crate) mod theme;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Paragraph, Widget, Wrap};

use crate::app::{App, Mode, Screen};
use crate::layout::{Chrome, MIN_HEIGHT, MIN_WIDTH, areas};

/// Draws the whole dashboard.
pub(crate) fn render(app: &App, frame: &mut Frame<'_>) {
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
        let areas = areas(Chrome::of(self), area);
        header::render_header(self, areas.header, buf);
        if let Some(banner) = areas.banner {
            banner::render_banner(self, banner, buf);
        }
        match self.screen {
            Screen::Table => {
                table::render_table(self, areas.table, buf);
                if let Some(bottom) = areas.bottom {
                    render_bottom(self, bottom, buf);
                }
            }
            Screen::Store => store_screen::render_store_screen(self, areas.main, buf),
            Screen::Persisters => persisters::render_persisters(self, areas.main, buf),
        }
        footer::render_footer(self, areas.footer, buf);
        match self.mode {
            Mode::Help => help::render_help(self, area, buf),
            Mode::Confirm => actions::render_confirmation(self, areas.main, buf),
            Mode::Form => actions::render_limits_form(self, areas.main, buf),
            Mode::Normal | Mode::Filter => {}
        }
        if self.no_color {
            without_colours(area, buf);
        }
    }
}

/// `NO_COLOR` (no-color.org): every colour taken out after drawing, so no panel can forget
/// it. Bold, dim, underline and reverse stay; what was told apart by a painted background
/// (the disconnected banner) is reversed instead.
fn without_colours(area: Rect, buf: &mut Buffer) {
    use ratatui::style::{Color, Modifier};
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            if let Some(cell) = buf.cell_mut((x, y)) {
                if cell.bg != Color::Reset {
                    cell.modifier |= Modifier::REVERSED;
                }
                cell.fg = Color::Reset;
                cell.bg = Color::Reset;
            }
        }
    }
}

fn render_bottom(app: &App, area: Rect, buf: &mut Buffer) {
    // A coalescing store's top entities need more room than the panel has on a small
    // terminal (80×24 leaves it 6 lines): the panel then takes the whole width, the rates and
    // the events giving way, and lists the entities in columns.
    if store_panel::wants_full_width(app, area) {
        store_panel::render_store_panel(app, area, buf);
        return;
    }
    let [store, side] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    store_panel::render_store_panel(app, store, buf);
    let rates_height = if side.height >= 12 { 6 } else { 4 };
    let [rates, events] =
        Layout::vertical([Constraint::Length(rates_height), Constraint::Min(0)]).areas(side);
    rates::render_rates(app, rates, buf);
    events::render_events(app, events, buf);
}

#[cfg(test)]
mod tests;
