//! The pure view: draws the model, nothing else. Only the visible rows are built, so a frame
//! costs the same with ten or a hundred thousand entries. Every string that came from outside
//! goes through `safe` first.

use std::borrow::Cow;

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};
use time::OffsetDateTime;

use super::keymap;
use super::model::{Confirm, Mode, Model, Prompt, Tab};
use crate::scopes::short_form;
use crate::store::ConnectionStatus;

/// Escapes control characters (C0, DEL, C1) and bidi overrides so a string from outside (a
/// tool name, an error text, an edited store) cannot move the cursor, recolour or reorder the
/// screen. Borrowed when there is nothing to escape (the common case).
pub fn safe(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if bad(c) {
                    format!("\\u{{{:x}}}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn fg(m: &Model, c: Color) -> Style {
    // NO_COLOR: no colours, but bold/reverse still mark what matters.
    if m.color {
        Style::default().fg(c)
    } else {
        Style::default()
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// `12m04s`, `3h05m`, `2d04h`.
fn span_of(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn until(now: OffsetDateTime, t: Option<OffsetDateTime>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= now => "expired".into(),
        Some(t) => span_of(t - now),
    }
}

fn ago(now: OffsetDateTime, t: Option<OffsetDateTime>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t > now => "just now".into(),
        Some(t) => format!("{} ago", span_of(now - t)),
    }
}

fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn render(m: &Model, f: &mut Frame) {
    let [tabs, body, status, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    render_tabs(m, f, tabs);
    match m.tab {
        Tab::Connections => connections(m, f, body),
        Tab::Agents => agents(m, f, body),
        Tab::Profiles => profiles(m, f, body),
        Tab::Scopes => scopes(m, f, body),
        Tab::Audit => audit(m, f, body),
    }
    render_status(m, f, status);
    render_hints(m, f, hints);
    match &m.mode {
        Mode::Help => help(m, f),
        Mode::Detail => detail(m, f),
        Mode::Confirm(c) => confirm(m, f, c),
        Mode::Token { agent, token } => {
            let text = Text::from(vec![
                Line::from(format!(
                    "Agent {} was created. Its token is shown this once:",
                    safe(agent)
                )),
                Line::from(""),
                Line::styled(safe(&token.0).into_owned(), bold()),
                Line::from(""),
                Line::from("Put it in the MCP client's configuration now; enter closes."),
            ]);
            popup(f, "new agent token", text, 76);
        }
        Mode::Normal | Mode::Input { .. } => {}
    }
}

fn render_tabs(m: &Model, f: &mut Frame, area: Rect) {
    let mut spans = vec![Span::styled(" scopegate ", bold())];
    for t in Tab::ALL {
        let style = if t == m.tab {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!(" {} ", t.title()), style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_status(m: &Model, f: &mut Frame, area: Rect) {
    let line = match &m.mode {
        Mode::Input { prompt, text } => {
            let label = match prompt {
                Prompt::Filter => "filter (actor: action: service: outcome: user:)".to_owned(),
                Prompt::AgentAdd => "new agent: NAME USER [PROFILE]".to_owned(),
                Prompt::ProfileEdit(p) => {
                    format!("allow for {} (SERVICE or SERVICE:GLOB …)", safe(p))
                }
            };
            Line::from(vec![
                Span::styled(format!("{label}: "), bold()),
                Span::raw(safe(text).into_owned()),
                Span::styled("█", Style::default().add_modifier(Modifier::SLOW_BLINK)),
            ])
        }
        _ => {
            let mut spans = Vec::new();
            if !m.filter.is_empty() {
                spans.push(Span::styled(format!("/{} ", safe(&m.filter)), bold()));
            }
            match &m.status {
                Some(Ok(s)) => spans.push(Span::styled(safe(s).into_owned(), fg(m, Color::Green))),
                Some(Err(s)) => spans.push(Span::styled(
                    format!("error: {}", safe(s)),
                    fg(m, Color::Red).add_modifier(Modifier::BOLD),
                )),
                None => {}
            }
            Line::from(spans)
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn render_hints(m: &Model, f: &mut Frame, area: Rect) {
    let mut spans = Vec::new();
    // Tab-specific actions first, then the essentials; the full list is under `?`.
    for b in keymap::active(m.tab)
        .filter(|b| b.scope != keymap::Scope::Global || matches!(b.label, "/" | "?" | "q"))
    {
        spans.push(Span::styled(b.label, bold()));
        spans.push(Span::raw(format!(" {}  ", b.help)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Rows `offset..offset+height` of `rows`, keeping `selected` visible.
fn window(rows: usize, selected: usize, height: usize) -> std::ops::Range<usize> {
    let height = height.max(1);
    let offset = selected
        .saturating_sub(height - 1)
        .min(rows.saturating_sub(height));
    offset..(offset + height).min(rows)
}

#[allow(clippy::too_many_arguments)] // a table is its title, columns, widths and rows
fn table<'a>(
    m: &Model,
    f: &mut Frame,
    area: Rect,
    title: String,
    header: &[&'a str],
    widths: &[Constraint],
    rows: &[usize],
    mut row: impl FnMut(usize) -> Vec<Cell<'a>>,
) {
    let block = Block::bordered().title(title);
    let inner_h = block.inner(area).height.saturating_sub(1) as usize;
    let sel = m.selected();
    let range = window(rows.len(), sel, inner_h);
    let built: Vec<Row> = rows[range.clone()]
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let r = Row::new(row(i));
            if range.start + k == sel {
                r.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                r
            }
        })
        .collect();
    let t = Table::new(built, widths.to_vec())
        .header(Row::new(header.to_vec()).style(bold()))
        .column_spacing(1)
        .block(block);
    f.render_widget(t, area);
}

fn counted(name: &str, shown: usize, total: usize) -> String {
    if shown == total {
        format!(" {name} ({total}) ")
    } else {
        format!(" {name} ({shown} of {total}) ")
    }
}

fn status_style(m: &Model, s: ConnectionStatus) -> Style {
    match s {
        ConnectionStatus::Active => fg(m, Color::Green),
        ConnectionStatus::Refreshing => fg(m, Color::Yellow),
        ConnectionStatus::NeedsReauth => fg(m, Color::Red).add_modifier(Modifier::BOLD),
        ConnectionStatus::Revoked => fg(m, Color::DarkGray),
    }
}

fn connections(m: &Model, f: &mut Frame, area: Rect) {
    let rows = m.rows();
    table(
        m,
        f,
        area,
        counted("connections", rows.len(), m.connections.len()),
        &[
            "USER",
            "SERVICE",
            "STATUS",
            "EXPIRES",
            "REFRESHED",
            "ST",
            "SCOPES / REASON",
        ],
        &[
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(2),
            Constraint::Fill(1),
        ],
        &rows,
        |i| {
            let c = &m.connections[i];
            let note = match (&c.status_reason, c.rotation_due, &c.refresh.degraded) {
                (_, true, _) => "key rotation due".to_owned(),
                (Some(r), false, _) => safe(r).into_owned(),
                (None, false, Some(d)) => format!("degraded: {}", safe(d)),
                (None, false, None) => safe(&short_forms(&c.scopes)).into_owned(),
            };
            let last = if c.kind == crate::store::ConnectionKind::ApiKey {
                "api key".to_owned()
            } else {
                ago(m.now, c.last_refresh).replace(" ago", "")
            };
            vec![
                Cell::from(safe(&c.user).into_owned()),
                Cell::from(safe(&c.service).into_owned()),
                Cell::from(c.status.as_str()).style(status_style(m, c.status)),
                Cell::from(until(m.now, c.access_expires)),
                Cell::from(last),
                Cell::from(c.strikes.to_string()),
                Cell::from(note),
            ]
        },
    );
}

fn agents(m: &Model, f: &mut Frame, area: Rect) {
    let rows = m.rows();
    table(
        m,
        f,
        area,
        counted("agents", rows.len(), m.agents.len()),
        &["NAME", "OWNER", "PROFILE", "STATE", "LAST SEEN"],
        &[
            Constraint::Length(16),
            Constraint::Length(12),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
        &rows,
        |i| {
            let a = &m.agents[i];
            let state = if a.revoked.is_some() {
                Cell::from("revoked").style(fg(m, Color::DarkGray))
            } else {
                Cell::from("active").style(fg(m, Color::Green))
            };
            vec![
                Cell::from(safe(&a.name).into_owned()),
                Cell::from(safe(&a.user).into_owned()),
                Cell::from(safe(a.profile.as_deref().unwrap_or("(all)")).into_owned()),
                state,
                Cell::from(ago(m.now, a.last_seen)),
            ]
        },
    );
}

fn profiles(m: &Model, f: &mut Frame, area: Rect) {
    let rows = m.rows();
    table(
        m,
        f,
        area,
        counted("profiles", rows.len(), m.profiles.len()),
        &["NAME", "AGENTS", "ALLOWED SERVICES AND TOOLS"],
        &[
            Constraint::Length(16),
            Constraint::Length(6),
            Constraint::Fill(1),
        ],
        &rows,
        |i| {
            let p = &m.profiles[i];
            let users = m
                .agents
                .iter()
                .filter(|a| a.revoked.is_none() && a.profile.as_deref() == Some(p.name.as_str()))
                .count();
            let rules: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
            vec![
                Cell::from(safe(&p.name).into_owned()),
                Cell::from(users.to_string()),
                Cell::from(safe(&rules.join(" ")).into_owned()),
            ]
        },
    );
}

fn short_forms(scopes: &[String]) -> String {
    let short: Vec<&str> = scopes.iter().map(|s| short_form(s)).collect();
    short.join(" ")
}

fn scopes(m: &Model, f: &mut Frame, area: Rect) {
    let rows = m.rows();
    let over = m.scopes.iter().filter(|s| s.over_scoped()).count();
    table(
        m,
        f,
        area,
        format!(
            "{}— {over} over-scoped ",
            counted("scope audit", rows.len(), m.scopes.len())
        ),
        &["USER", "SERVICE", "GRANTED", "FINDINGS"],
        &[
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(24),
            Constraint::Fill(1),
        ],
        &rows,
        |i| {
            let s = &m.scopes[i];
            let findings = if s.needed.is_none() {
                Cell::from("no tool map").style(fg(m, Color::DarkGray))
            } else if s.findings.is_empty() {
                Cell::from("ok").style(fg(m, Color::Green))
            } else {
                let text: Vec<String> = s
                    .findings
                    .iter()
                    .map(|x| format!("{}: {}", safe(short_form(&x.scope)), x.kind.as_str()))
                    .collect();
                Cell::from(text.join("; ")).style(fg(m, Color::Yellow))
            };
            vec![
                Cell::from(safe(&s.user).into_owned()),
                Cell::from(safe(&s.service).into_owned()),
                Cell::from(safe(&short_forms(&s.granted)).into_owned()),
                findings,
            ]
        },
    );
}

fn audit(m: &Model, f: &mut Frame, area: Rect) {
    let [list, verify] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let rows = &m.audit_view;
    table(
        m,
        f,
        list,
        format!("{}— live ", counted("audit log", rows.len(), m.audit.len())),
        &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
        &[
            Constraint::Length(7),
            Constraint::Length(19),
            Constraint::Length(14),
            Constraint::Length(18),
            Constraint::Fill(1),
            Constraint::Length(8),
        ],
        rows,
        |i| {
            let e = &m.audit[i];
            let outcome = if e.outcome == "ok" {
                Cell::from("ok").style(fg(m, Color::Green))
            } else {
                Cell::from(safe(&e.outcome).into_owned()).style(fg(m, Color::Red))
            };
            vec![
                Cell::from(e.seq.to_string()),
                Cell::from(stamp(e.time)),
                Cell::from(safe(&e.actor).into_owned()),
                Cell::from(safe(&e.action).into_owned()),
                Cell::from(safe(&e.target).into_owned()),
                outcome,
            ]
        },
    );
    let line = match &m.verify {
        None => Line::from("audit verify: not run (v)"),
        Some(Ok(v)) => Line::styled(
            format!(
                "audit verify: intact, {} entries, head {}",
                v.entries,
                safe(v.head_hash.get(..16).unwrap_or(&v.head_hash))
            ),
            fg(m, Color::Green),
        ),
        Some(Err(e)) => Line::styled(
            format!("audit verify: FAILED: {}", safe(e)),
            fg(m, Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    f.render_widget(Paragraph::new(line), verify);
}

/// A bordered box centred on the screen, `w` columns wide (or the screen's width), as tall as
/// its text needs once wrapped: a long value (a narrowing link is 100+ columns) wraps onto
/// further rows instead of being cut off at the bottom edge.
fn popup(f: &mut Frame, title: &str, text: Text, w: u16) {
    let area = f.area();
    let w = w.min(area.width);
    let p = Paragraph::new(text)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(format!(" {title} ")));
    let h = u16::try_from(p.line_count(w.saturating_sub(2))).unwrap_or(u16::MAX);
    let [v] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::horizontal([Constraint::Length(w)])
        .flex(Flex::Center)
        .areas(v);
    f.render_widget(Clear, r);
    f.render_widget(p, r);
}

fn help(m: &Model, f: &mut Frame) {
    let lines: Vec<Line> = keymap::active(m.tab)
        .map(|b| {
            Line::from(vec![
                Span::styled(format!("{:>7}  ", b.label), bold()),
                Span::raw(b.help),
            ])
        })
        .collect();
    popup(
        f,
        &format!("keys: {}", m.tab.title()),
        Text::from(lines),
        46,
    );
}

fn kv(k: &str, v: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{k:>11}: "), bold()),
        Span::raw(v.into()),
    ])
}

fn detail(m: &Model, f: &mut Frame) {
    let Some(i) = m.current() else { return };
    let (title, lines): (String, Vec<Line>) = match m.tab {
        Tab::Connections => {
            let c = &m.connections[i];
            (
                "connection".into(),
                vec![
                    kv("id", safe(&c.id)),
                    kv("user", safe(&c.user)),
                    kv("service", safe(&c.service)),
                    kv("kind", format!("{:?}", c.kind).to_lowercase()),
                    kv("status", c.status.as_str()),
                    kv("reason", safe(c.status_reason.as_deref().unwrap_or("-"))),
                    kv(
                        "degraded",
                        safe(c.refresh.degraded.as_deref().unwrap_or("-")),
                    ),
                    kv("scopes", safe(&c.scopes.join(" "))),
                    // A keyed fingerprint identifies the secret without revealing it.
                    kv(
                        "fingerprint",
                        safe(c.secret_fingerprint.as_deref().unwrap_or("-")),
                    ),
                    kv("expires in", until(m.now, c.access_expires)),
                    kv("refreshed", ago(m.now, c.last_refresh)),
                    kv("strikes", c.strikes.to_string()),
                    kv("created", stamp(c.created)),
                ],
            )
        }
        Tab::Agents => {
            let a = &m.agents[i];
            (
                "agent".into(),
                vec![
                    kv("name", safe(&a.name)),
                    kv("id", safe(&a.id)),
                    kv("owner", safe(&a.user)),
                    kv(
                        "profile",
                        safe(a.profile.as_deref().unwrap_or("(all services)")),
                    ),
                    kv("created", stamp(a.created)),
                    kv("revoked", a.revoked.map_or("-".into(), stamp)),
                    kv("last seen", ago(m.now, a.last_seen)),
                ],
            )
        }
        Tab::Profiles => {
            let p = &m.profiles[i];
            let mut lines = vec![kv("name", safe(&p.name)), kv("id", safe(&p.id))];
            for r in &p.rules {
                let tools = if r.tools.is_empty() {
                    "every tool".to_owned()
                } else {
                    r.tools.join(", ")
                };
                lines.push(kv(&safe(&r.service), safe(&tools)));
            }
            ("profile".into(), lines)
        }
        Tab::Scopes => {
            let s = &m.scopes[i];
            let mut lines = vec![
                kv("connection", safe(&s.connection)),
                kv("user", safe(&s.user)),
                kv("service", safe(&s.service)),
                kv("granted", safe(&s.granted.join(" "))),
                kv(
                    "needed",
                    s.needed
                        .as_ref()
                        .map_or("unknown (no tool map)".into(), |n| {
                            safe(&n.join(" ")).into_owned()
                        }),
                ),
            ];
            for e in &s.exercised {
                lines.push(kv(
                    "exercised",
                    format!(
                        "{} ({} calls, last {})",
                        safe(&e.scope),
                        e.calls,
                        ago(m.now, Some(e.last_used))
                    ),
                ));
            }
            for x in &s.findings {
                let instead = if x.instead.is_empty() {
                    String::new()
                } else {
                    format!(" — {} serves", safe(&x.instead.join(" ")))
                };
                lines.push(kv(
                    "finding",
                    format!("{}: {}{instead}", safe(&x.scope), x.kind.as_str()),
                ));
            }
            if let (Some(n), Some(u)) = (&s.narrowed, &s.fix_url) {
                lines.push(kv(
                    "fix",
                    format!("reconnect with only {}", safe(&n.join(" "))),
                ));
                lines.push(Line::from(
                    "  Send the user this link (it asks them to confirm):",
                ));
                lines.push(Line::from(format!("  {}", safe(u))));
            }
            ("scope audit".into(), lines)
        }
        Tab::Audit => {
            let e = &m.audit[i];
            let mut lines = vec![
                kv("seq", e.seq.to_string()),
                kv("time", stamp(e.time)),
                kv("actor", safe(&e.actor)),
                kv("action", safe(&e.action)),
                kv("target", safe(&e.target)),
                kv("outcome", safe(&e.outcome)),
            ];
            for (k, v) in &e.details {
                lines.push(kv(&safe(k), safe(v)));
            }
            lines.push(kv("hash", safe(e.hash.get(..32).unwrap_or(&e.hash))));
            ("audit entry".into(), lines)
        }
    };
    // As wide as the screen: detail values (links, scope URLs, reasons) are long.
    popup(f, &title, Text::from(lines), u16::MAX);
}

fn confirm(m: &Model, f: &mut Frame, c: &Confirm) {
    let what = match c {
        Confirm::RevokeConnection { label, .. } => format!(
            "Revoke the connection of {}? Its sealed tokens are deleted here (the user's Disconnect also revokes at the provider).",
            safe(label)
        ),
        Confirm::RevokeAgent { name } => {
            format!(
                "Revoke agent {}? Its token stops working at once.",
                safe(name)
            )
        }
    };
    let text = Text::from(vec![
        Line::from(what),
        Line::from(""),
        Line::styled(
            "y: revoke    n/esc: cancel",
            bold().patch(fg(m, Color::Red)),
        ),
    ]);
    popup(f, "confirm", text, 60);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::tests::{entry, t};
    use crate::console::model::{Loaded, Msg, update};
    use crate::gateway::ConnectionView;
    use crate::gateway::scopes::AgentView;
    use crate::scopes::{ConnectionScopes, Exercised, Finding, FindingKind};
    use crate::store::{ConnectionKind, Profile, ProfileRule};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const GCAL: &str = "https://www.googleapis.com/auth/calendar";
    /// A narrowing link as the gateway builds one for a Google connection: 125 columns.
    const GOOGLE_FIX: &str = "https://gateway.example.org:8443/connect?narrow=calendar&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcalendar.readonly";

    fn draw(m: &Model, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap_or_else(|_| unreachable!());
        let _ = term.draw(|f| render(m, f));
        term.backend().to_string()
    }

    fn sample() -> Model {
        let now = t(10_000);
        let mut m = Model::new(now, true);
        let c = |id: &str, user: &str, svc: &str, st: ConnectionStatus| ConnectionView {
            id: id.into(),
            user: user.into(),
            service: svc.into(),
            kind: ConnectionKind::Oauth,
            status: st,
            status_reason: None,
            scopes: vec!["files.read".into(), "files.write".into()],
            secret_fingerprint: Some("fp:3a9c1e".into()),
            created: t(0),
            updated: t(0),
            secret_set_at: Some(t(0)),
            rotation_due: false,
            access_expires: Some(now + time::Duration::seconds(724)),
            last_refresh: Some(now - time::Duration::seconds(3000)),
            strikes: 0,
            refresh: Default::default(),
            dpop_jkt: None,
        };
        let mut bad = c("c2", "bob", "calendar", ConnectionStatus::NeedsReauth);
        bad.status_reason = Some("refresh rejected 3 times (invalid_grant)\u{1b}[31m".into());
        bad.strikes = 3;
        bad.access_expires = Some(now - time::Duration::seconds(5));
        let mut key = c("c3", "carol", "search", ConnectionStatus::Active);
        key.kind = ConnectionKind::ApiKey;
        key.scopes.clear();
        key.access_expires = None;
        key.rotation_due = true;
        update(
            &mut m,
            Msg::Loaded(Loaded::Connections(vec![
                c("c1", "alice", "files", ConnectionStatus::Active),
                bad,
                key,
            ])),
        );
        update(
            &mut m,
            Msg::Loaded(Loaded::Agents(vec![
                AgentView {
                    name: "claude-desktop".into(),
                    id: "a1".into(),
                    user: "alice".into(),
                    profile: Some("readers".into()),
                    created: t(0),
                    revoked: None,
                    last_seen: Some(now - time::Duration::seconds(42)),
                },
                AgentView {
                    name: "old-bot".into(),
                    id: "a2".into(),
                    user: "bob".into(),
                    profile: None,
                    created: t(0),
                    revoked: Some(t(5)),
                    last_seen: None,
                },
            ])),
        );
        update(
            &mut m,
            Msg::Loaded(Loaded::Profiles(vec![Profile {
                id: "p1".into(),
                name: "readers".into(),
                rules: vec![
                    ProfileRule {
                        service: "files".into(),
                        tools: vec!["read_*".into()],
                    },
                    ProfileRule {
                        service: "search".into(),
                        tools: vec![],
                    },
                ],
                created: t(0),
            }])),
        );
        update(
            &mut m,
            Msg::Loaded(Loaded::Scopes(vec![
                ConnectionScopes {
                    connection: "c1".into(),
                    user: "alice".into(),
                    service: "files".into(),
                    status: "active".into(),
                    granted: vec!["files.read".into(), "files.write".into()],
                    needed: Some(vec!["files.read".into(), "files.write".into()]),
                    exercised: vec![Exercised {
                        scope: "files.read".into(),
                        last_used: now - time::Duration::seconds(90),
                        calls: 17,
                    }],
                    unmapped_tools: vec![],
                    findings: vec![Finding {
                        kind: FindingKind::Unexercised,
                        scope: "files.write".into(),
                        instead: vec![],
                    }],
                    narrowed: Some(vec!["files.read".into()]),
                    fix_url: Some(
                        "http://127.0.0.1:8080/connect?narrow=files&scope=files.read".into(),
                    ),
                },
                ConnectionScopes {
                    connection: "c4".into(),
                    user: "bob".into(),
                    service: "calendar".into(),
                    status: "active".into(),
                    granted: vec![GCAL.into()],
                    needed: Some(vec![format!("{GCAL}.readonly")]),
                    exercised: vec![],
                    unmapped_tools: vec![],
                    findings: vec![Finding {
                        kind: FindingKind::Broader,
                        scope: GCAL.into(),
                        instead: vec![format!("{GCAL}.readonly")],
                    }],
                    narrowed: Some(vec![format!("{GCAL}.readonly")]),
                    fix_url: Some(GOOGLE_FIX.into()),
                },
            ])),
        );
        update(&mut m, Msg::Loaded(Loaded::AuditCount(0)));
        let mut e = vec![
            entry(1, "system", "store.create", "store", "ok"),
            entry(2, "admin", "user.add", "alice", "ok"),
            entry(3, "agent:claude-desktop", "mcp.call", "files", "ok"),
            entry(4, "agent:claude-desktop", "mcp.call", "files", "denied"),
        ];
        e[2].details.insert("tool".into(), "read_file".into());
        e[2].details.insert("connection".into(), "c1".into());
        e[3].details.insert("tool".into(), "write_file\u{7}".into());
        update(&mut m, Msg::Loaded(Loaded::Audit(e)));
        m
    }

    fn on(tab: Tab) -> Model {
        let mut m = sample();
        while m.tab != tab {
            update(&mut m, Msg::NextTab);
        }
        m
    }

    #[test]
    fn connections_80x24() {
        insta::assert_snapshot!(draw(&on(Tab::Connections), 80, 24));
    }

    #[test]
    fn connections_wide() {
        insta::assert_snapshot!(draw(&on(Tab::Connections), 120, 12));
    }

    #[test]
    fn connection_detail_shows_fingerprint_not_secret() {
        let mut m = on(Tab::Connections);
        update(&mut m, Msg::Down);
        update(&mut m, Msg::OpenDetail);
        let screen = draw(&m, 80, 24);
        // The reason's escape sequence arrived as text, escaped, never as an ESC byte.
        assert!(
            !screen.contains('\u{1b}') && screen.contains("\\u{1b}[31m"),
            "{screen}"
        );
        insta::assert_snapshot!(screen);
    }

    #[test]
    fn revoke_confirmation_80x24() {
        let mut m = on(Tab::Connections);
        update(&mut m, Msg::AskRevoke);
        insta::assert_snapshot!(draw(&m, 80, 24));
    }

    #[test]
    fn agents_80x24() {
        insta::assert_snapshot!(draw(&on(Tab::Agents), 80, 24));
    }

    #[test]
    fn new_agent_token_shown_once() {
        let mut m = on(Tab::Agents);
        update(
            &mut m,
            Msg::AgentAdded {
                agent: "bot".into(),
                token: crate::console::model::ShownOnce(zeroize::Zeroizing::new(
                    "sga_example_token_for_the_snapshot".into(),
                )),
            },
        );
        insta::assert_snapshot!(draw(&m, 80, 24));
        update(&mut m, Msg::Back);
        assert!(!draw(&m, 80, 24).contains("sga_example"));
    }

    #[test]
    fn profiles_80x24_and_edit_prompt() {
        let mut m = on(Tab::Profiles);
        insta::assert_snapshot!("profiles_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::EditProfile);
        insta::assert_snapshot!("profile_edit_80x24", draw(&m, 80, 24));
    }

    #[test]
    fn scopes_80x24_and_narrowing_fix() {
        let mut m = on(Tab::Scopes);
        insta::assert_snapshot!("scopes_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::Narrow);
        insta::assert_snapshot!("scopes_fix_80x24", draw(&m, 80, 24));
    }

    /// The screen's text inside the popup's side borders, rows joined: what a wrapped value
    /// reads as when every row of it is shown.
    fn unwrapped(screen: &str) -> String {
        screen
            .lines()
            .filter_map(|l| {
                let l = l.trim_matches('"');
                let inner = l.strip_prefix('│')?.strip_suffix('│')?;
                Some(inner.trim_end().to_owned())
            })
            .collect()
    }

    /// Regression: detail boxes were 78 columns wide and as tall as their line count, so a
    /// Google narrowing link (wrapped over two rows) lost its end at the bottom border.
    #[test]
    fn a_long_narrowing_link_is_shown_whole() {
        let mut m = on(Tab::Scopes);
        update(&mut m, Msg::Down);
        update(&mut m, Msg::Narrow);
        let screen = draw(&m, 80, 24);
        assert!(unwrapped(&screen).contains(GOOGLE_FIX), "{screen}");
        insta::assert_snapshot!("scopes_fix_google_80x24", screen);
        // The list shows Google's scopes without their URL prefix; the detail has them whole.
        update(&mut m, Msg::Back);
        let list = draw(&m, 80, 24);
        assert!(
            list.contains("calendar: broader") && !list.contains("googleapis"),
            "{list}"
        );
    }

    #[test]
    fn agent_detail_add_prompt_and_revoke_confirmation() {
        let mut m = on(Tab::Agents);
        update(&mut m, Msg::OpenDetail);
        insta::assert_snapshot!("agent_detail_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::Back);
        update(&mut m, Msg::StartAgentAdd);
        for c in "ci-bot".chars() {
            update(&mut m, Msg::InputChar(c));
        }
        insta::assert_snapshot!("agent_add_prompt_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::Back);
        update(&mut m, Msg::AskRevoke);
        let screen = draw(&m, 80, 24);
        assert!(screen.contains("Revoke agent claude-desktop?"), "{screen}");
        insta::assert_snapshot!("agent_revoke_confirm_80x24", screen);
    }

    #[test]
    fn profile_detail_80x24() {
        let mut m = on(Tab::Profiles);
        update(&mut m, Msg::OpenDetail);
        insta::assert_snapshot!(draw(&m, 80, 24));
    }

    #[test]
    fn audit_verify_intact_and_an_unreachable_server() {
        let mut m = on(Tab::Audit);
        update(
            &mut m,
            Msg::Loaded(Loaded::Verify(Ok(crate::store::audit::Verified {
                entries: 4,
                head_hash: "9f2c".repeat(16),
                head_authenticated: true,
            }))),
        );
        insta::assert_snapshot!("audit_verify_intact_80x24", draw(&m, 80, 24));
        update(
            &mut m,
            Msg::Done(Err("cannot reach the server's admin socket".into())),
        );
        insta::assert_snapshot!("status_error_80x24", draw(&m, 80, 24));
    }

    #[test]
    fn help_for_every_view() {
        for tab in Tab::ALL {
            let mut m = on(tab);
            update(&mut m, Msg::ToggleHelp);
            let screen = draw(&m, 80, 24);
            for b in keymap::active(tab) {
                assert!(screen.contains(b.help), "{tab:?}: {} missing", b.help);
            }
            insta::assert_snapshot!(format!("help_{tab:?}_80x24"), screen);
        }
    }

    /// NO_COLOR (no-color.org): no cell carries a colour; with colour on, findings and states
    /// do (so the check is not vacuous).
    #[test]
    fn no_color_means_no_colour_anywhere() {
        fn colours(m: &Model) -> usize {
            let mut term =
                Terminal::new(TestBackend::new(80, 24)).unwrap_or_else(|_| unreachable!());
            let _ = term.draw(|f| render(m, f));
            term.backend()
                .buffer()
                .content()
                .iter()
                .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
                .count()
        }
        let coloured: usize = Tab::ALL.iter().map(|t| colours(&on(*t))).sum();
        assert!(coloured > 0, "no colour anywhere even with colour on");
        for tab in Tab::ALL {
            let mut m = on(tab);
            m.color = false;
            assert_eq!(colours(&m), 0, "{tab:?} is coloured under NO_COLOR");
            update(&mut m, Msg::OpenDetail);
            assert_eq!(colours(&m), 0, "{tab:?} detail is coloured under NO_COLOR");
        }
    }

    #[test]
    fn audit_80x24_detail_and_verify() {
        let mut m = on(Tab::Audit);
        insta::assert_snapshot!("audit_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::Up);
        update(&mut m, Msg::OpenDetail);
        insta::assert_snapshot!("audit_detail_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::Back);
        update(
            &mut m,
            Msg::Loaded(Loaded::Verify(Err(
                "audit entry 3: hash mismatch (edited?)".into(),
            ))),
        );
        insta::assert_snapshot!("audit_verify_failed_80x24", draw(&m, 80, 24));
    }

    #[test]
    fn long_audit_log_shows_the_tail_and_filters() {
        let mut m = on(Tab::Audit);
        let many: Vec<_> = (5..=50_000u64)
            .map(|i| {
                let outcome = if i.is_multiple_of(1000) {
                    "denied"
                } else {
                    "ok"
                };
                entry(
                    i,
                    &format!("agent:bot{}", i % 7),
                    "mcp.call",
                    "files",
                    outcome,
                )
            })
            .collect();
        update(&mut m, Msg::Loaded(Loaded::Audit(many)));
        insta::assert_snapshot!("audit_long_tail_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::StartFilter);
        for c in "outcome:denied actor:bot3".chars() {
            update(&mut m, Msg::InputChar(c));
        }
        insta::assert_snapshot!("audit_long_filter_prompt_80x24", draw(&m, 80, 24));
        update(&mut m, Msg::InputSubmit);
        insta::assert_snapshot!("audit_long_filtered_80x24", draw(&m, 80, 24));
    }

    #[test]
    fn help_is_generated_from_the_keymap() {
        let mut m = on(Tab::Connections);
        update(&mut m, Msg::ToggleHelp);
        let screen = draw(&m, 80, 24);
        for b in keymap::active(Tab::Connections) {
            assert!(screen.contains(b.help), "{} missing from help", b.help);
        }
        insta::assert_snapshot!(screen);
    }

    #[test]
    fn safe_escapes_controls_and_bidi() {
        assert_eq!(safe("ok"), Cow::Borrowed("ok"));
        assert_eq!(safe("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(safe("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
    }

    #[test]
    fn window_keeps_the_cursor_visible() {
        assert_eq!(window(100, 0, 10), 0..10);
        assert_eq!(window(100, 50, 10), 41..51);
        assert_eq!(window(100, 99, 10), 90..100);
        assert_eq!(window(3, 2, 10), 0..3);
    }
}
