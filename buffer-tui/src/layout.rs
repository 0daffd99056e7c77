//! Where each part of the dashboard goes on a terminal of a given size.
//!
//! A pure function of the terminal size and the few facts about the state that change the
//! chrome (a demo header line, the disconnected banner). The renderer draws into these areas,
//! and the dashboard loop tells [`App`] how many table rows fit
//! ([`Action::Viewport`]): so paging and the rows the poller reads always match what is drawn,
//! and `App` itself never computes a layout.

use ratatui::layout::{Constraint, Layout, Rect};

use crate::app::{Action, App, Connection};

/// Smaller than this, the dashboard only says so.
pub(crate) const MIN_WIDTH: u16 = 40;
/// Smaller than this, the dashboard only says so.
pub(crate) const MIN_HEIGHT: u16 = 10;

/// The width of one master's cell in the header, and the gap between two cells: two masters
/// side by side fit in 80 columns (after the header's one-column margin).
pub(crate) const MASTER_CELL: u16 = 38;
pub(crate) const MASTER_GAP: u16 = 2;
/// At most this many header lines list masters; more masters than fit are summed up in the
/// last cell.
pub(crate) const MAX_MASTER_LINES: u16 = 3;

/// The facts about the state that change the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chrome {
    /// The demo adds a third header line with its counters.
    pub(crate) demo: bool,
    /// Announced persisters add a third header line with their output (the demo's line says
    /// it already).
    pub(crate) persisters: bool,
    /// A lost connection adds a banner under the header: one line, or two when what it says
    /// first ([`banner_lead`], this many columns) does not fit on one.
    pub(crate) banner: bool,
    pub(crate) banner_lead_width: usize,
    /// The masters of a cluster (0 on one server): the header lists them, a few per line.
    pub(crate) masters: usize,
}

impl Chrome {
    /// The chrome `app` is drawn with.
    pub(crate) fn of(app: &App) -> Self {
        Self {
            demo: app.demo.is_some(),
            persisters: !app.persisters.is_empty(),
            banner: matches!(app.connection, Connection::Lost { .. }),
            banner_lead_width: banner_lead(app).map_or(0, |lead| crate::format::width(&lead)),
            masters: app.masters.as_ref().map_or(0, Vec::len),
        }
    }
}

/// What the banner says first while Redis cannot be reached: `Redis at <address> is
/// unreachable: <why>` (the poller's words for why). The banner and the empty table say it.
pub(crate) fn banner_lead(app: &App) -> Option<String> {
    let Connection::Lost { error, .. } = &app.connection else {
        return None;
    };
    Some(format!(
        "Redis at {} is unreachable: {}",
        crate::format::clean(&app.address),
        crate::format::clean(error)
    ))
}

/// How many masters' cells fit on one header line of `width` columns (at least one).
pub(crate) fn masters_per_line(width: u16) -> usize {
    let room = width.saturating_sub(1) + MASTER_GAP;
    usize::from((room / (MASTER_CELL + MASTER_GAP)).max(1))
}

/// How many header lines list `masters` masters on a terminal `width` columns wide.
pub(crate) fn master_lines(masters: usize, width: u16) -> u16 {
    let lines = masters.div_ceil(masters_per_line(width));
    u16::try_from(lines).map_or(MAX_MASTER_LINES, |lines| lines.min(MAX_MASTER_LINES))
}

/// Where each part goes.
pub(crate) struct Areas {
    pub(crate) header: Rect,
    pub(crate) banner: Option<Rect>,
    /// Everything between the header (and banner) and the footer.
    pub(crate) main: Rect,
    pub(crate) table: Rect,
    pub(crate) bottom: Option<Rect>,
    pub(crate) footer: Rect,
}

/// Splits `area` for `chrome`.
pub(crate) fn areas(chrome: Chrome, area: Rect) -> Areas {
    // The lead has a one-column margin.
    let banner_height = match chrome.banner {
        false => 0,
        true if chrome.banner_lead_width < usize::from(area.width) => 1,
        true => 2,
    };
    let third_line = chrome.demo || chrome.persisters;
    let header_height = if third_line { 3 } else { 2 } + master_lines(chrome.masters, area.width);
    let [header, banner, main, footer] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(banner_height),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    // The bottom panels take about two fifths, when there is room for them at all.
    let bottom_height = if main.height >= 16 {
        (main.height * 2 / 5).clamp(8, 18)
    } else {
        0
    };
    let [table, bottom] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(bottom_height)]).areas(main);
    Areas {
        header,
        banner: (banner_height > 0).then_some(banner),
        main,
        table,
        bottom: (bottom_height > 0).then_some(bottom),
        footer,
    }
}

/// How many store rows the table shows for `chrome` on a `width` x `height` terminal.
pub(crate) fn table_rows(chrome: Chrome, width: u16, height: u16) -> usize {
    let areas = areas(chrome, Rect::new(0, 0, width, height));
    // Borders and the header row.
    usize::from(areas.table.height.saturating_sub(3))
}

/// The table row (0 = the top row on screen) at column `x`, row `y` of a terminal of `size`,
/// when the stores table is shown there and a store is listed on that row.
pub(crate) fn table_row_at(
    app: &App,
    (width, height): (u16, u16),
    x: u16,
    y: u16,
) -> Option<usize> {
    if app.screen != crate::app::Screen::Table || app.mode != crate::app::Mode::Normal {
        return None;
    }
    let table = areas(Chrome::of(app), Rect::new(0, 0, width, height)).table;
    // Inside the border, below the header row.
    let first = table.y + 2;
    let inside = x > table.x && x + 1 < table.right() && y >= first && y + 1 < table.bottom();
    let row = usize::from(y.checked_sub(first)?);
    (inside && app.offset + row < app.view.len()).then_some(row)
}

/// The [`Action::Viewport`] that tells `app` its table's size on a `width` x `height`
/// terminal, or `None` when it already knows. The dashboard applies it after every batch of
/// actions (any of them may change the chrome) and before drawing.
pub(crate) fn viewport(app: &App, width: u16, height: u16) -> Option<Action> {
    let table_rows = table_rows(Chrome::of(app), width, height);
    (table_rows != app.page()).then_some(Action::Viewport { table_rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_loses_a_row_to_the_banner_and_to_the_demo_or_persisters_line() {
        let plain = Chrome {
            demo: false,
            persisters: false,
            banner: false,
            banner_lead_width: 0,
            masters: 0,
        };
        let rows = table_rows(plain, 120, 40);
        assert!(rows > 0);
        assert_eq!(
            table_rows(
                Chrome {
                    banner: true,
                    banner_lead_width: 0,
                    ..plain
                },
                120,
                40
            ),
            rows - 1
        );
        assert_eq!(
            table_rows(
                Chrome {
                    demo: true,
                    ..plain
                },
                120,
                40
            ),
            rows - 1
        );
        let persisters = Chrome {
            persisters: true,
            ..plain
        };
        assert_eq!(table_rows(persisters, 120, 40), rows - 1);
        assert_eq!(
            table_rows(
                Chrome {
                    demo: true,
                    ..persisters
                },
                120,
                40
            ),
            rows - 1,
            "the demo's line says where it writes: one line for both"
        );
        assert_eq!(table_rows(plain, 30, 3), 0);
    }

    #[test]
    fn masters_take_as_few_header_lines_as_fit_and_at_most_three() {
        assert_eq!(
            masters_per_line(80),
            2,
            "two masters side by side at 80 columns"
        );
        assert_eq!(master_lines(3, 80), 2);
        assert_eq!(master_lines(3, 160), 1);
        assert_eq!(master_lines(0, 80), 0, "one server lists no masters");
        assert_eq!(master_lines(40, 80), MAX_MASTER_LINES);
        assert_eq!(masters_per_line(20), 1, "at least one per line");
        let plain = Chrome {
            demo: false,
            persisters: false,
            banner: false,
            banner_lead_width: 0,
            masters: 0,
        };
        let cluster = Chrome {
            masters: 3,
            ..plain
        };
        assert_eq!(table_rows(cluster, 80, 24), table_rows(plain, 80, 24) - 2);
    }

    #[test]
    fn the_viewport_follows_the_chrome_so_paging_matches_what_is_drawn() {
        let mut app = App::new(crate::app::AppConfig {
            address: "redis://127.0.0.1:1/0".into(),
            namespace: "buf".into(),
            max_age: None,
            demo_out: None,
            now_ms: 0,
            read_only: false,
            no_color: false,
        });
        let rows = table_rows(Chrome::of(&app), 80, 24);
        assert_eq!(
            viewport(&app, 80, 24),
            Some(Action::Viewport { table_rows: rows })
        );
        app.update(Action::Viewport { table_rows: rows });
        assert_eq!(viewport(&app, 80, 24), None, "nothing to tell twice");
        // The banner takes a row from the table: the app must hear of it.
        app.update(Action::PollFailed {
            error: "refused".into(),
            at_ms: 1,
        });
        assert_eq!(
            viewport(&app, 80, 24),
            Some(Action::Viewport {
                table_rows: rows - 1
            })
        );
    }
}
