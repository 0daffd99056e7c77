//! The one key-binding table: it maps key presses to [`Action`]s and is what the footer hints
//! and the help screen list, so the three never disagree (gitui's key list).
//!
//! This is the only module of the dashboard that knows crossterm's key events; [`App`] only
//! ever sees the [`Action`]s.
//!
//! [`App`]: crate::app::App

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::app::{Action, Mode, Screen};

/// A key as the table names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    /// This key, whatever the modifiers (Shift is part of the character).
    Code(KeyCode),
    /// Ctrl and this character.
    Ctrl(char),
    /// Any character (typing into the filter).
    AnyChar,
    /// Any key at all.
    Any,
}

impl Key {
    fn matches(self, event: &KeyEvent) -> bool {
        match self {
            Self::Code(code) => event.code == code,
            Self::Ctrl(c) => {
                event.modifiers.contains(KeyModifiers::CONTROL) && event.code == KeyCode::Char(c)
            }
            Self::AnyChar => matches!(event.code, KeyCode::Char(_)),
            Self::Any => true,
        }
    }

    /// How the help writes it.
    pub(crate) fn label(self) -> String {
        match self {
            Self::Code(KeyCode::Up) => "↑".into(),
            Self::Code(KeyCode::Down) => "↓".into(),
            Self::Code(KeyCode::PageUp) => "PgUp".into(),
            Self::Code(KeyCode::PageDown) => "PgDn".into(),
            Self::Code(KeyCode::Char(' ')) => "Space".into(),
            Self::Code(KeyCode::Char(c)) => c.to_string(),
            Self::Code(code) => code.to_string(),
            Self::Ctrl(c) => format!("Ctrl-{}", c.to_ascii_uppercase()),
            Self::AnyChar => "a character".into(),
            Self::Any => "any key".into(),
        }
    }
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// In every mode, before the mode's own bindings.
    Always,
    /// In this mode.
    In(Mode),
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) scope: Scope,
    /// The keys; the first binding of the scope with a matching key wins.
    pub(crate) keys: &'static [Key],
    /// What they do. For [`Key::AnyChar`] bindings the typed character replaces the one here.
    pub(crate) action: Action,
    /// How the footer writes the keys (short, may cover the next row too, as `↑↓ jk`).
    pub(crate) footer_keys: &'static str,
    /// The footer's word for it on the stores table (and in the filter input); `None`: not
    /// shown there.
    pub(crate) footer_table: Option<&'static str>,
    /// The footer's word for it on the store screen; `None`: not shown there.
    pub(crate) footer_store: Option<&'static str>,
    /// What the help says it does; `None`: not listed.
    pub(crate) help: Option<&'static str>,
    /// An action that changes Redis: bound, shown in the footer and listed in the help only
    /// when the dashboard may act (not `--read-only`, and the Redis user has write rights).
    pub(crate) writes: bool,
}

const fn bind(scope: Scope, keys: &'static [Key], action: Action) -> Binding {
    Binding {
        scope,
        keys,
        action,
        footer_keys: "",
        footer_table: None,
        footer_store: None,
        help: None,
        writes: false,
    }
}

impl Binding {
    /// Shown in the footer as `keys` with `table` / `store` on those screens.
    const fn footer(
        mut self,
        keys: &'static str,
        table: Option<&'static str>,
        store: Option<&'static str>,
    ) -> Self {
        self.footer_keys = keys;
        self.footer_table = table;
        self.footer_store = store;
        self
    }

    /// Listed in the help with `what`.
    const fn help(mut self, what: &'static str) -> Self {
        self.help = Some(what);
        self
    }

    /// An action that changes Redis (see [`Binding::writes`]).
    const fn writes(mut self) -> Self {
        self.writes = true;
        self
    }
}

const NORMAL: Scope = Scope::In(Mode::Normal);
const FILTER: Scope = Scope::In(Mode::Filter);
const HELP: Scope = Scope::In(Mode::Help);
const CONFIRM: Scope = Scope::In(Mode::Confirm);
const FORM: Scope = Scope::In(Mode::Form);

use KeyCode::{BackTab, Backspace, Char, Down, End, Enter, Esc, Home, PageDown, PageUp, Tab, Up};

/// Every key binding, in the order the footer and the help list them.
pub(crate) static BINDINGS: &[Binding] = &[
    bind(NORMAL, &[Key::Code(Char('q'))], Action::Quit)
        .footer("q", Some("quit"), Some("quit"))
        .help("quit"),
    bind(NORMAL, &[Key::Code(Esc)], Action::Back)
        .footer("Esc", None, Some("back"))
        .help("back; clears the filter"),
    bind(NORMAL, &[Key::Code(Up), Key::Code(Char('k'))], Action::Up)
        .footer("↑↓ jk", Some("move"), Some("next store"))
        .help("select the previous store"),
    bind(
        NORMAL,
        &[Key::Code(Down), Key::Code(Char('j'))],
        Action::Down,
    )
    .help("select the next store"),
    bind(NORMAL, &[Key::Code(PageUp)], Action::PageUp).help("one page up"),
    bind(
        NORMAL,
        &[Key::Code(PageDown), Key::Code(Char(' '))],
        Action::PageDown,
    )
    .help("one page down"),
    bind(
        NORMAL,
        &[Key::Code(Home), Key::Code(Char('g'))],
        Action::Top,
    )
    .help("the first store"),
    bind(
        NORMAL,
        &[Key::Code(End), Key::Code(Char('G'))],
        Action::Bottom,
    )
    .help("the last store"),
    bind(NORMAL, &[Key::Code(Enter)], Action::Enter)
        .footer("Enter", Some("open"), None)
        .help("open the selected store: keys, batches, records"),
    bind(NORMAL, &[Key::Code(Char('/'))], Action::FilterStart)
        .footer("/", Some("filter"), None)
        .help("filter stores by name (Enter keeps, Esc clears)"),
    bind(NORMAL, &[Key::Code(Char('s'))], Action::SortNext)
        .footer("s", Some("sort"), None)
        .help("sort by the next column"),
    // Not in the footer (the help lists it): at 80 columns the actions need the room.
    bind(NORMAL, &[Key::Code(Char('S'))], Action::SortReverse).help("reverse the sort order"),
    bind(NORMAL, &[Key::Code(Char('t'))], Action::NextTopField)
        .footer("t", None, Some("top by"))
        .help("rank a coalescing store's top entities by another sum"),
    bind(NORMAL, &[Key::Code(Char('f'))], Action::Flush)
        .footer("f", Some("flush"), Some("flush"))
        .help("flush now: the persisters write it at their next poll")
        .writes(),
    bind(NORMAL, &[Key::Code(Char('r'))], Action::Retry)
        .footer("r", None, Some("retry"))
        .help("retry its failing batch now (clears the backoff)")
        .writes(),
    bind(NORMAL, &[Key::Code(Char('p'))], Action::PauseResume)
        .footer("p", Some("pause"), Some("pause"))
        .help("pause persisting the store, or resume it")
        .writes(),
    bind(NORMAL, &[Key::Code(Char('l'))], Action::EditLimits)
        .footer("l", Some("limits"), Some("limits"))
        .help("set, change or clear its limits (a form)")
        .writes(),
    bind(NORMAL, &[Key::Code(Char('P'))], Action::Persisters)
        .footer("P", Some("persisters"), None)
        .help("the persisters and the batches they hold"),
    bind(
        NORMAL,
        &[Key::Code(Char('?')), Key::Code(KeyCode::F(1))],
        Action::Help,
    )
    .footer("?", Some("help"), Some("help"))
    .help("this help"),
    // Checked before the bindings of any mode (see `action_for`), listed after them.
    bind(
        Scope::Always,
        &[Key::Ctrl('c'), Key::Ctrl('d')],
        Action::Quit,
    )
    .help("quit"),
    // In the filter input the footer shows these two whatever the screen.
    bind(FILTER, &[Key::Code(Enter)], Action::FilterAccept).footer(
        "Enter",
        Some("keep"),
        Some("keep"),
    ),
    bind(FILTER, &[Key::Code(Esc)], Action::FilterCancel).footer(
        "Esc",
        Some("clear"),
        Some("clear"),
    ),
    bind(
        FILTER,
        &[Key::Code(KeyCode::Backspace)],
        Action::FilterBackspace,
    ),
    bind(FILTER, &[Key::Code(Up)], Action::Up),
    bind(FILTER, &[Key::Code(Down)], Action::Down),
    bind(FILTER, &[Key::AnyChar], Action::FilterInput(' ')),
    // An action's confirmation line: only these keys answer it.
    bind(
        CONFIRM,
        &[Key::Code(Char('y')), Key::Code(Enter)],
        Action::Confirm,
    )
    .footer("y", Some("do it"), Some("do it")),
    bind(
        CONFIRM,
        &[Key::Code(Char('n')), Key::Code(Esc), Key::Code(Char('q'))],
        Action::Cancel,
    )
    .footer("n", Some("cancel"), Some("cancel")),
    // The limits form.
    bind(FORM, &[Key::Code(Enter)], Action::FormSubmit).footer(
        "Enter",
        Some("apply"),
        Some("apply"),
    ),
    bind(FORM, &[Key::Code(Esc)], Action::Cancel).footer("Esc", Some("cancel"), Some("cancel")),
    bind(FORM, &[Key::Code(Tab), Key::Code(Down)], Action::FormNext).footer(
        "Tab",
        Some("next field"),
        Some("next field"),
    ),
    bind(
        FORM,
        &[Key::Code(BackTab), Key::Code(Up)],
        Action::FormPrevious,
    ),
    bind(FORM, &[Key::Code(Backspace)], Action::FormBackspace),
    bind(FORM, &[Key::AnyChar], Action::FormInput(' ')),
    bind(HELP, &[Key::Code(Char('q'))], Action::Quit),
    // Any other key closes the help.
    bind(HELP, &[Key::Any], Action::Help),
];

/// The action for a key press in `mode`, if any: the first binding that applies. Actions
/// that change Redis are bound only when `can_act`.
pub(crate) fn action_for(mode: Mode, event: &KeyEvent, can_act: bool) -> Option<Action> {
    if event.kind != KeyEventKind::Press {
        return None;
    }
    let always = BINDINGS.iter().filter(|b| b.scope == Scope::Always);
    let in_mode = BINDINGS.iter().filter(|b| b.scope == Scope::In(mode));
    let binding = always
        .chain(in_mode)
        .filter(|b| can_act || !b.writes)
        .find(|b| b.keys.iter().any(|k| k.matches(event)))?;
    Some(match (&binding.action, event.code) {
        (Action::FilterInput(_), KeyCode::Char(c)) => Action::FilterInput(c),
        (Action::FormInput(_), KeyCode::Char(c)) => Action::FormInput(c),
        (action, _) => action.clone(),
    })
}

/// The footer's hints on `screen` in `mode`: (keys, what they do), in table order; actions
/// that change Redis only when `can_act`.
pub(crate) fn footer_hints(
    mode: Mode,
    screen: Screen,
    can_act: bool,
) -> impl Iterator<Item = (&'static str, &'static str)> {
    // The help is a popup over the normal screen, whose hints stay.
    let scope = match mode {
        Mode::Filter => FILTER,
        Mode::Confirm => CONFIRM,
        Mode::Form => FORM,
        Mode::Normal | Mode::Help => NORMAL,
    };
    BINDINGS
        .iter()
        .filter(move |b| b.scope == scope && (can_act || !b.writes))
        .filter_map(move |b| {
            let what = match screen {
                Screen::Table => b.footer_table,
                Screen::Store => b.footer_store,
                // The persisters screen says how to leave it in its own title.
                Screen::Persisters => b.footer_store.filter(|_| !b.writes),
            }?;
            Some((b.footer_keys, what))
        })
}

/// The help's lines: (keys, what they do) for every binding of normal mode and every mode;
/// actions that change Redis only when `can_act`.
pub(crate) fn help_lines(can_act: bool) -> impl Iterator<Item = (String, &'static str)> {
    BINDINGS
        .iter()
        .filter(|b| matches!(b.scope, Scope::Always | Scope::In(Mode::Normal)))
        .filter(move |b| can_act || !b.writes)
        .filter_map(|b| {
            let keys: Vec<String> = b.keys.iter().map(|k| k.label()).collect();
            Some((keys.join(" "), b.help?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions_by_mode() {
        let char = |c| key(KeyCode::Char(c));
        let normal = |event| action_for(Mode::Normal, &event, true);
        assert_eq!(normal(char('j')), Some(Action::Down));
        assert_eq!(normal(char('k')), Some(Action::Up));
        assert_eq!(normal(char('q')), Some(Action::Quit));
        assert_eq!(normal(char('/')), Some(Action::FilterStart));
        assert_eq!(normal(char('?')), Some(Action::Help));
        assert_eq!(normal(char(' ')), Some(Action::PageDown));
        assert_eq!(normal(char('t')), Some(Action::NextTopField));
        assert_eq!(normal(char('x')), None);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        for mode in [
            Mode::Normal,
            Mode::Filter,
            Mode::Help,
            Mode::Confirm,
            Mode::Form,
        ] {
            assert_eq!(
                action_for(mode, &ctrl_c, true),
                Some(Action::Quit),
                "{mode:?}"
            );
        }
        assert_eq!(
            action_for(Mode::Filter, &char('q'), true),
            Some(Action::FilterInput('q'))
        );
        assert_eq!(
            action_for(Mode::Filter, &key(KeyCode::Enter), true),
            Some(Action::FilterAccept)
        );
        assert_eq!(
            action_for(Mode::Help, &char('x'), true),
            Some(Action::Help),
            "any key closes help"
        );
        assert_eq!(action_for(Mode::Help, &char('q'), true), Some(Action::Quit));
        let mut release = char('j');
        release.kind = KeyEventKind::Release;
        assert_eq!(action_for(Mode::Normal, &release, true), None);
    }

    #[test]
    fn every_key_the_footer_or_the_help_names_is_bound() {
        // The footer and the help are read from the table: each entry they show has keys.
        for screen in [Screen::Table, Screen::Store] {
            for mode in [Mode::Normal, Mode::Filter, Mode::Confirm, Mode::Form] {
                let hints: Vec<_> = footer_hints(mode, screen, true).collect();
                assert!(!hints.is_empty(), "{mode:?} {screen:?}");
                assert!(hints.iter().all(|(keys, _)| !keys.is_empty()));
            }
        }
        let help: Vec<_> = help_lines(true).collect();
        assert!(
            help.iter()
                .any(|(keys, what)| keys == "? F1" && *what == "this help")
        );
        for (keys, _) in &help {
            assert!(!keys.is_empty());
        }
        // Every action is reachable from the help, and read-only hides every one of them.
        for action in [
            Action::Flush,
            Action::Retry,
            Action::PauseResume,
            Action::EditLimits,
        ] {
            let binding = BINDINGS.iter().find(|b| b.action == action).unwrap();
            assert!(binding.writes && binding.help.is_some(), "{binding:?}");
            let key = binding.help.unwrap();
            assert!(help_lines(true).any(|(_, what)| what == key));
            assert!(!help_lines(false).any(|(_, what)| what == key));
            for screen in [Screen::Table, Screen::Store] {
                assert!(
                    footer_hints(Mode::Normal, screen, false)
                        .all(|(keys, _)| keys != binding.footer_keys)
                );
            }
        }
        let flush = KeyEvent::new(KeyCode::Char('f'), KeyModifiers::NONE);
        assert_eq!(action_for(Mode::Normal, &flush, true), Some(Action::Flush));
        assert_eq!(action_for(Mode::Normal, &flush, false), None, "read-only");
        // No two bindings of one scope share a key: the first would hide the second.
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                if a.scope == b.scope {
                    assert!(
                        a.keys.iter().all(|k| !b.keys.contains(k)),
                        "{a:?} and {b:?} share a key"
                    );
                }
            }
        }
    }
}
