//! Keys → messages, from one table that also produces the `?` help and the hint bar, so the
//! help can never disagree with what the keys do.

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind,
};

use super::model::{Mode, Model, Msg, Tab};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    In(Tab),
}

pub struct Binding {
    pub keys: &'static [KeyCode],
    pub label: &'static str,
    pub help: &'static str,
    pub scope: Scope,
    pub msg: fn() -> Msg,
}

const fn b(
    keys: &'static [KeyCode],
    label: &'static str,
    help: &'static str,
    scope: Scope,
    msg: fn() -> Msg,
) -> Binding {
    Binding {
        keys,
        label,
        help,
        scope,
        msg,
    }
}

pub const BINDINGS: &[Binding] = &[
    b(&[KeyCode::Char('q')], "q", "quit", Scope::Global, || {
        Msg::Quit
    }),
    b(&[KeyCode::Char('?')], "?", "help", Scope::Global, || {
        Msg::ToggleHelp
    }),
    b(&[KeyCode::Tab], "tab", "next view", Scope::Global, || {
        Msg::NextTab
    }),
    b(
        &[KeyCode::BackTab],
        "S-tab",
        "previous view",
        Scope::Global,
        || Msg::PrevTab,
    ),
    b(
        &[KeyCode::Char('j'), KeyCode::Down],
        "j/↓",
        "down",
        Scope::Global,
        || Msg::Down,
    ),
    b(
        &[KeyCode::Char('k'), KeyCode::Up],
        "k/↑",
        "up",
        Scope::Global,
        || Msg::Up,
    ),
    b(
        &[KeyCode::PageDown],
        "PgDn",
        "page down",
        Scope::Global,
        || Msg::PageDown,
    ),
    b(&[KeyCode::PageUp], "PgUp", "page up", Scope::Global, || {
        Msg::PageUp
    }),
    b(
        &[KeyCode::Char('g'), KeyCode::Home],
        "g",
        "first",
        Scope::Global,
        || Msg::Top,
    ),
    b(
        &[KeyCode::Char('G'), KeyCode::End],
        "G",
        "last",
        Scope::Global,
        || Msg::Bottom,
    ),
    b(&[KeyCode::Char('/')], "/", "filter", Scope::Global, || {
        Msg::StartFilter
    }),
    b(
        &[KeyCode::Char('c')],
        "c",
        "clear filter",
        Scope::Global,
        || Msg::ClearFilter,
    ),
    b(&[KeyCode::Enter], "enter", "details", Scope::Global, || {
        Msg::OpenDetail
    }),
    b(&[KeyCode::Char('R')], "R", "reload", Scope::Global, || {
        Msg::Reload
    }),
    b(
        &[KeyCode::Char('r')],
        "r",
        "refresh token now",
        Scope::In(Tab::Connections),
        || Msg::RefreshNow,
    ),
    b(
        &[KeyCode::Char('d')],
        "d",
        "revoke connection",
        Scope::In(Tab::Connections),
        || Msg::AskRevoke,
    ),
    b(
        &[KeyCode::Char('a')],
        "a",
        "add agent",
        Scope::In(Tab::Agents),
        || Msg::StartAgentAdd,
    ),
    b(
        &[KeyCode::Char('d')],
        "d",
        "revoke agent",
        Scope::In(Tab::Agents),
        || Msg::AskRevoke,
    ),
    b(
        &[KeyCode::Char('e')],
        "e",
        "edit allowed services/tools",
        Scope::In(Tab::Profiles),
        || Msg::EditProfile,
    ),
    b(
        &[KeyCode::Char('n')],
        "n",
        "narrowing fix",
        Scope::In(Tab::Scopes),
        || Msg::Narrow,
    ),
    b(
        &[KeyCode::Char('v')],
        "v",
        "verify audit chain",
        Scope::In(Tab::Audit),
        || Msg::Verify,
    ),
];

/// The bindings active in a tab (tab-specific first, for the hint bar).
pub fn active(tab: Tab) -> impl Iterator<Item = &'static Binding> {
    let specific = BINDINGS.iter().filter(move |b| b.scope == Scope::In(tab));
    let global = BINDINGS.iter().filter(|b| b.scope == Scope::Global);
    specific.chain(global)
}

/// Maps a mouse event to a message (`console --mouse`): the wheel moves the cursor in lists;
/// everything else is left to the keys.
pub fn mouse_to_msg(m: &Model, e: MouseEvent) -> Option<Msg> {
    if !matches!(m.mode, Mode::Normal) {
        return None;
    }
    match e.kind {
        MouseEventKind::ScrollDown => Some(Msg::Down),
        MouseEventKind::ScrollUp => Some(Msg::Up),
        _ => None,
    }
}

/// Maps a terminal key to a message, given the mode (prompts take text; dialogs take y/n).
pub fn to_msg(m: &Model, key: KeyEvent) -> Option<Msg> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Msg::Quit);
    }
    match &m.mode {
        Mode::Input { .. } => match key.code {
            KeyCode::Enter => Some(Msg::InputSubmit),
            KeyCode::Esc => Some(Msg::Back),
            KeyCode::Backspace => Some(Msg::InputBackspace),
            KeyCode::Char(c) => Some(Msg::InputChar(c)),
            _ => None,
        },
        Mode::Confirm(_) => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => Some(Msg::Yes),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => Some(Msg::No),
            _ => None,
        },
        Mode::Token { .. } | Mode::Help | Mode::Detail
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter) =>
        {
            Some(Msg::Back)
        }
        Mode::Token { .. } => None,
        _ => match key.code {
            // As in k9s: esc first drops an active filter.
            KeyCode::Esc if !m.filter.is_empty() => Some(Msg::ClearFilter),
            KeyCode::Esc => Some(Msg::Back),
            code => active(m.tab)
                .find(|b| b.keys.contains(&code))
                .map(|b| (b.msg)()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::tests::t;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn the_wheel_moves_the_cursor_only_outside_dialogs_and_esc_drops_a_filter() {
        let wheel = |kind| MouseEvent {
            kind,
            column: 10,
            row: 5,
            modifiers: KeyModifiers::NONE,
        };
        let mut m = Model::new(t(0), false);
        assert_eq!(
            mouse_to_msg(&m, wheel(MouseEventKind::ScrollDown)),
            Some(Msg::Down)
        );
        assert_eq!(
            mouse_to_msg(&m, wheel(MouseEventKind::ScrollUp)),
            Some(Msg::Up)
        );
        assert_eq!(
            mouse_to_msg(
                &m,
                wheel(MouseEventKind::Down(
                    ratatui::crossterm::event::MouseButton::Left
                ))
            ),
            None
        );
        m.filter = "ci".into();
        assert_eq!(to_msg(&m, key(KeyCode::Esc)), Some(Msg::ClearFilter));
        m.filter.clear();
        assert_eq!(to_msg(&m, key(KeyCode::Esc)), Some(Msg::Back));
        // A confirmation waits for y or n; the wheel must not move what it is about.
        m.mode = Mode::Confirm(crate::console::model::Confirm::RevokeAgent { name: "a".into() });
        assert_eq!(mouse_to_msg(&m, wheel(MouseEventKind::ScrollDown)), None);
    }

    #[test]
    fn tab_specific_keys_only_in_their_tab() {
        let mut m = Model::new(t(0), false);
        assert_eq!(to_msg(&m, key(KeyCode::Char('r'))), Some(Msg::RefreshNow));
        assert_eq!(to_msg(&m, key(KeyCode::Char('v'))), None);
        m.tab = Tab::Audit;
        assert_eq!(to_msg(&m, key(KeyCode::Char('v'))), Some(Msg::Verify));
        assert_eq!(to_msg(&m, key(KeyCode::Char('r'))), None);
        m.tab = Tab::Agents;
        assert_eq!(to_msg(&m, key(KeyCode::Char('d'))), Some(Msg::AskRevoke));
    }

    #[test]
    fn prompts_take_q_as_text_and_dialogs_only_y_or_n() {
        let mut m = Model::new(t(0), false);
        crate::console::model::update(&mut m, Msg::StartFilter);
        assert_eq!(
            to_msg(&m, key(KeyCode::Char('q'))),
            Some(Msg::InputChar('q'))
        );
        m.mode = Mode::Confirm(crate::console::model::Confirm::RevokeAgent { name: "x".into() });
        assert_eq!(to_msg(&m, key(KeyCode::Char('q'))), None);
        assert_eq!(to_msg(&m, key(KeyCode::Char('y'))), Some(Msg::Yes));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_view() {
        for tab in Tab::ALL {
            let mut seen = Vec::new();
            for b in active(tab) {
                for k in b.keys {
                    assert!(!seen.contains(k), "{k:?} twice in {tab:?}");
                    seen.push(*k);
                }
            }
        }
    }
}
