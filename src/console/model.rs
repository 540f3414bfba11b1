//! The console's state, its messages and the pure `update` (Elm architecture): `update` never
//! does I/O; it returns the effects to run in the background.

use std::collections::VecDeque;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::gateway::ConnectionView;
use crate::gateway::scopes::AgentView;
use crate::scopes::ConnectionScopes;
use crate::store::Profile;
use crate::store::audit::{Entry, Verified};

/// How many audit entries the console keeps (the newest); older ones stay on the server.
pub const AUDIT_CAP: usize = 100_000;
/// Live tail: ask for new entries this often (in ticks of the event loop).
pub const TAIL_EVERY_TICKS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Connections,
    Agents,
    Profiles,
    Scopes,
    Audit,
}

impl Tab {
    pub const ALL: [Tab; 5] = [
        Tab::Connections,
        Tab::Agents,
        Tab::Profiles,
        Tab::Scopes,
        Tab::Audit,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Connections => "Connections",
            Tab::Agents => "Agents",
            Tab::Profiles => "Profiles",
            Tab::Scopes => "Scopes",
            Tab::Audit => "Audit",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// A secret the console shows exactly once (a new agent's token): zeroized on drop, and its
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ShownOnce(pub Zeroizing<String>);

impl std::fmt::Debug for ShownOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShownOnce(..)")
    }
}

/// What a text prompt is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Filter,
    /// `NAME USER [PROFILE]`
    AgentAdd,
    /// The rules of this profile, space-separated.
    ProfileEdit(String),
}

/// An action waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    RevokeConnection { id: String, label: String },
    RevokeAgent { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Help,
    Detail,
    Input {
        prompt: Prompt,
        text: String,
    },
    Confirm(Confirm),
    /// A new agent's token, shown once; dropped (and zeroized) when dismissed.
    Token {
        agent: String,
        token: ShownOnce,
    },
}

/// What the background fetched or did.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Connections(Vec<ConnectionView>),
    Agents(Vec<AgentView>),
    Profiles(Vec<Profile>),
    Scopes(Vec<ConnectionScopes>),
    /// New entries after the last one held (at most a page).
    Audit(Vec<Entry>),
    /// The server's entry count at start, so the first fetch skips what the cap drops.
    AuditCount(u64),
    Verify(Result<Verified, String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Tick(OffsetDateTime),
    Quit,
    NextTab,
    PrevTab,
    Down,
    Up,
    PageDown,
    PageUp,
    Top,
    Bottom,
    ToggleHelp,
    OpenDetail,
    Back,
    StartFilter,
    ClearFilter,
    Reload,
    AskRevoke,
    RefreshNow,
    StartAgentAdd,
    EditProfile,
    Verify,
    Narrow,
    Yes,
    No,
    InputChar(char),
    InputBackspace,
    InputSubmit,
    Loaded(Loaded),
    /// A background action finished: what to tell the admin.
    Done(Result<String, String>),
    AgentAdded {
        agent: String,
        token: ShownOnce,
    },
    /// The server cannot be reached (shown in the status line; the UI keeps working).
    Failed(String),
}

/// I/O for the background to perform, via the admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    LoadConnections,
    LoadAgents,
    LoadProfiles,
    LoadScopes,
    AuditCount,
    LoadAudit {
        after: u64,
    },
    Verify,
    RevokeConnection(String),
    RefreshConnection(String),
    AgentAdd {
        name: String,
        user: String,
        profile: Option<String>,
    },
    AgentRevoke(String),
    ProfileSet {
        name: String,
        allow: Vec<String>,
    },
}

pub struct Model {
    pub tab: Tab,
    pub now: OffsetDateTime,
    pub color: bool,
    pub mode: Mode,
    pub connections: Vec<ConnectionView>,
    pub agents: Vec<AgentView>,
    pub profiles: Vec<Profile>,
    pub scopes: Vec<ConnectionScopes>,
    pub audit: VecDeque<Entry>,
    /// Indices into `audit` that pass the filter, kept up to date by `update` so `view` does
    /// no O(n) work per frame.
    pub audit_view: Vec<usize>,
    pub audit_last_seq: u64,
    audit_started: bool,
    audit_inflight: bool,
    pub verify: Option<Result<Verified, String>>,
    pub filter: String,
    pub selected: [usize; 5],
    pub status: Option<Result<String, String>>,
    pub quit: bool,
    ticks: u32,
}

impl Model {
    pub fn new(now: OffsetDateTime, color: bool) -> Self {
        Self {
            tab: Tab::Connections,
            now,
            color,
            mode: Mode::Normal,
            connections: Vec::new(),
            agents: Vec::new(),
            profiles: Vec::new(),
            scopes: Vec::new(),
            audit: VecDeque::new(),
            audit_view: Vec::new(),
            audit_last_seq: 0,
            audit_started: false,
            audit_inflight: false,
            verify: None,
            filter: String::new(),
            selected: [0; 5],
            status: None,
            quit: false,
            ticks: 0,
        }
    }

    /// The effects that fill a fresh model.
    pub fn init() -> Vec<Effect> {
        vec![
            Effect::LoadConnections,
            Effect::LoadAgents,
            Effect::LoadProfiles,
            Effect::LoadScopes,
            Effect::AuditCount,
        ]
    }

    pub fn selected(&self) -> usize {
        self.selected[self.tab.index()]
    }

    /// Rows of the current tab after the filter (indices into its list).
    pub fn rows(&self) -> Vec<usize> {
        let f = Filter::parse(&self.filter);
        match self.tab {
            Tab::Connections => filtered(&self.connections, |c| {
                f.matches_fields(&[
                    ("user", &c.user),
                    ("service", &c.service),
                    ("status", c.status.as_str()),
                    ("id", &c.id),
                ])
            }),
            Tab::Agents => filtered(&self.agents, |a| {
                f.matches_fields(&[
                    ("actor", &a.name),
                    ("user", &a.user),
                    ("profile", a.profile.as_deref().unwrap_or("")),
                ])
            }),
            Tab::Profiles => filtered(&self.profiles, |p| {
                let rules: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
                f.matches_fields(&[("profile", &p.name), ("service", &rules.join(" "))])
            }),
            Tab::Scopes => filtered(&self.scopes, |s| {
                f.matches_fields(&[
                    ("user", &s.user),
                    ("service", &s.service),
                    ("id", &s.connection),
                ])
            }),
            Tab::Audit => self.audit_view.clone(),
        }
    }

    fn row_count(&self) -> usize {
        match self.tab {
            Tab::Audit => self.audit_view.len(),
            _ => self.rows().len(),
        }
    }

    /// The item under the cursor in the current tab (index into its list).
    pub fn current(&self) -> Option<usize> {
        match self.tab {
            Tab::Audit => self.audit_view.get(self.selected()).copied(),
            _ => self.rows().get(self.selected()).copied(),
        }
    }

    fn clamp(&mut self) {
        let n = self.row_count();
        let i = self.tab.index();
        self.selected[i] = self.selected[i].min(n.saturating_sub(1));
    }

    fn move_by(&mut self, delta: isize) {
        let n = self.row_count();
        let i = self.tab.index();
        let cur = self.selected[i] as isize;
        self.selected[i] = (cur + delta).clamp(0, n.saturating_sub(1) as isize) as usize;
    }

    /// Re-filters the audit view. A cursor that was on the last row stays on the last row, so
    /// the live tail survives a filter change (including one made in another view: the filter
    /// is shared).
    fn rebuild_audit_view(&mut self) {
        let i = Tab::Audit.index();
        let tailing = self.selected[i] + 1 >= self.audit_view.len();
        let f = Filter::parse(&self.filter);
        self.audit_view = self
            .audit
            .iter()
            .enumerate()
            .filter(|(_, e)| f.matches_entry(e))
            .map(|(i, _)| i)
            .collect();
        if tailing {
            self.selected[i] = self.audit_view.len().saturating_sub(1);
        }
    }

    fn push_audit(&mut self, entries: Vec<Entry>) {
        let follow = self.tab != Tab::Audit
            || self.selected[Tab::Audit.index()] + 1 >= self.audit_view.len();
        let f = Filter::parse(&self.filter);
        let mut dropped = 0;
        for e in entries {
            if e.seq <= self.audit_last_seq {
                continue;
            }
            self.audit_last_seq = e.seq;
            if self.audit.len() == AUDIT_CAP {
                self.audit.pop_front();
                dropped += 1;
            }
            let keep = f.matches_entry(&e);
            self.audit.push_back(e);
            if keep {
                self.audit_view.push(self.audit.len() - 1);
            }
        }
        if dropped > 0 {
            // Indices shift by what fell off the front.
            self.audit_view.retain(|i| *i >= dropped);
            for i in &mut self.audit_view {
                *i -= dropped;
            }
        }
        // Live tail: a cursor on the last row follows new entries.
        if follow {
            self.selected[Tab::Audit.index()] = self.audit_view.len().saturating_sub(1);
        }
    }
}

fn filtered<T>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, x)| keep(x))
        .map(|(i, _)| i)
        .collect()
}

/// `/` filter: words, each `field:value` (actor, action, service, outcome, user, …) or a bare
/// value that may appear in any field; all must match (case-insensitive substring).
#[derive(Debug, Default)]
pub struct Filter {
    terms: Vec<(Option<String>, String)>,
}

impl Filter {
    pub fn parse(s: &str) -> Self {
        Self {
            terms: s
                .split_whitespace()
                .map(|w| match w.split_once(':') {
                    Some((k, v)) if !k.is_empty() => {
                        (Some(k.to_ascii_lowercase()), v.to_lowercase())
                    }
                    _ => (None, w.to_lowercase()),
                })
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn matches_fields(&self, fields: &[(&str, &str)]) -> bool {
        self.terms.iter().all(|(k, v)| {
            fields
                .iter()
                .filter(|(name, _)| k.as_deref().is_none_or(|k| k == *name))
                .any(|(_, val)| contains_ci(val, v))
        })
    }

    pub fn matches_entry(&self, e: &Entry) -> bool {
        if self.is_empty() {
            return true;
        }
        // An entry's service is its target for calls, or its `service` detail.
        let service = e.details.get("service").map_or(e.target.as_str(), |s| s);
        self.matches_fields(&[
            ("actor", &e.actor),
            ("action", &e.action),
            ("service", service),
            ("service", &e.target),
            ("target", &e.target),
            ("outcome", &e.outcome),
        ])
    }
}

fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle_lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
        return h
            .windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b));
    }
    hay.to_lowercase().contains(needle_lower)
}

const PAGE: isize = 10;

/// The pure update: new state in place, effects out.
pub fn update(m: &mut Model, msg: Msg) -> Vec<Effect> {
    let mut fx = Vec::new();
    match msg {
        Msg::Tick(now) => {
            m.now = now;
            m.ticks = m.ticks.wrapping_add(1);
            if m.audit_started && !m.audit_inflight && m.ticks.is_multiple_of(TAIL_EVERY_TICKS) {
                m.audit_inflight = true;
                fx.push(Effect::LoadAudit {
                    after: m.audit_last_seq,
                });
            }
        }
        Msg::Quit => m.quit = true,
        Msg::NextTab | Msg::PrevTab => {
            let i = m.tab.index();
            let n = Tab::ALL.len();
            let j = if msg == Msg::NextTab {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            m.tab = Tab::ALL[j];
            m.mode = Mode::Normal;
            m.clamp();
        }
        Msg::Down => m.move_by(1),
        Msg::Up => m.move_by(-1),
        Msg::PageDown => m.move_by(PAGE),
        Msg::PageUp => m.move_by(-PAGE),
        Msg::Top => m.move_by(isize::MIN / 2),
        Msg::Bottom => m.move_by(isize::MAX / 2),
        Msg::ToggleHelp => {
            m.mode = if m.mode == Mode::Help {
                Mode::Normal
            } else {
                Mode::Help
            }
        }
        Msg::OpenDetail => {
            if m.current().is_some() {
                m.mode = Mode::Detail;
            }
        }
        Msg::Back | Msg::No => m.mode = Mode::Normal,
        Msg::StartFilter => {
            m.mode = Mode::Input {
                prompt: Prompt::Filter,
                text: m.filter.clone(),
            }
        }
        Msg::ClearFilter => {
            m.filter.clear();
            m.rebuild_audit_view();
            m.clamp();
        }
        Msg::Reload => {
            fx.extend([
                Effect::LoadConnections,
                Effect::LoadAgents,
                Effect::LoadProfiles,
                Effect::LoadScopes,
            ]);
            m.status = Some(Ok("reloading…".into()));
        }
        Msg::AskRevoke => match (m.tab, m.current()) {
            (Tab::Connections, Some(i)) => {
                let c = &m.connections[i];
                m.mode = Mode::Confirm(Confirm::RevokeConnection {
                    id: c.id.clone(),
                    label: format!("{} on {}", c.user, c.service),
                });
            }
            (Tab::Agents, Some(i)) if m.agents[i].revoked.is_none() => {
                m.mode = Mode::Confirm(Confirm::RevokeAgent {
                    name: m.agents[i].name.clone(),
                });
            }
            _ => {}
        },
        Msg::RefreshNow => {
            if let (Tab::Connections, Some(i)) = (m.tab, m.current()) {
                let c = &m.connections[i];
                m.status = Some(Ok(format!("refreshing {} on {}…", c.user, c.service)));
                fx.push(Effect::RefreshConnection(c.id.clone()));
            }
        }
        Msg::StartAgentAdd => {
            if m.tab == Tab::Agents {
                m.mode = Mode::Input {
                    prompt: Prompt::AgentAdd,
                    text: String::new(),
                };
            }
        }
        Msg::EditProfile => {
            if let (Tab::Profiles, Some(i)) = (m.tab, m.current()) {
                let p = &m.profiles[i];
                let rules: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
                m.mode = Mode::Input {
                    prompt: Prompt::ProfileEdit(p.name.clone()),
                    text: rules.join(" "),
                };
            }
        }
        Msg::Verify => {
            m.verify = None;
            m.status = Some(Ok("verifying the audit chain…".into()));
            fx.push(Effect::Verify);
        }
        Msg::Narrow => {
            if let (Tab::Scopes, Some(i)) = (m.tab, m.current()) {
                m.mode = Mode::Detail;
                if m.scopes[i].fix_url.is_none() {
                    m.status = Some(Ok("no narrower grant to offer for this connection".into()));
                }
            }
        }
        Msg::Yes => {
            if let Mode::Confirm(c) = std::mem::replace(&mut m.mode, Mode::Normal) {
                match c {
                    Confirm::RevokeConnection { id, label } => {
                        m.status = Some(Ok(format!("revoking {label}…")));
                        fx.push(Effect::RevokeConnection(id));
                    }
                    Confirm::RevokeAgent { name } => {
                        m.status = Some(Ok(format!("revoking agent {name}…")));
                        fx.push(Effect::AgentRevoke(name));
                    }
                }
            }
        }
        Msg::InputChar(c) => {
            if let Mode::Input { text, .. } = &mut m.mode
                && text.chars().count() < 512
                && !c.is_control()
            {
                text.push(c);
            }
        }
        Msg::InputBackspace => {
            if let Mode::Input { text, .. } = &mut m.mode {
                text.pop();
            }
        }
        Msg::InputSubmit => {
            if let Mode::Input { prompt, text } = std::mem::replace(&mut m.mode, Mode::Normal) {
                match prompt {
                    Prompt::Filter => {
                        m.filter = text.trim().to_owned();
                        m.rebuild_audit_view();
                        for s in &mut m.selected {
                            *s = 0;
                        }
                        if m.tab == Tab::Audit {
                            m.selected[Tab::Audit.index()] = m.audit_view.len().saturating_sub(1);
                        }
                    }
                    Prompt::AgentAdd => {
                        let words: Vec<&str> = text.split_whitespace().collect();
                        match words.as_slice() {
                            [name, user] | [name, user, _] => {
                                fx.push(Effect::AgentAdd {
                                    name: (*name).to_owned(),
                                    user: (*user).to_owned(),
                                    profile: words.get(2).map(|p| (*p).to_owned()),
                                });
                                m.status = Some(Ok(format!("adding agent {name}…")));
                            }
                            _ => m.status = Some(Err("type: NAME USER [PROFILE]".into())),
                        }
                    }
                    Prompt::ProfileEdit(name) => {
                        let allow: Vec<String> =
                            text.split_whitespace().map(str::to_owned).collect();
                        m.status = Some(Ok(format!("saving profile {name}…")));
                        fx.push(Effect::ProfileSet { name, allow });
                    }
                }
            }
        }
        Msg::Loaded(l) => match l {
            Loaded::Connections(c) => {
                m.connections = c;
                m.clamp();
            }
            Loaded::Agents(a) => {
                m.agents = a;
                m.clamp();
            }
            Loaded::Profiles(p) => {
                m.profiles = p;
                m.clamp();
            }
            Loaded::Scopes(s) => {
                m.scopes = s;
                m.clamp();
            }
            Loaded::AuditCount(n) => {
                m.audit_started = true;
                m.audit_inflight = true;
                m.audit_last_seq = n.saturating_sub(AUDIT_CAP as u64);
                fx.push(Effect::LoadAudit {
                    after: m.audit_last_seq,
                });
            }
            Loaded::Audit(entries) => {
                let full = entries.len() >= super::effects::AUDIT_PAGE;
                m.push_audit(entries);
                // A full page means more is waiting: keep reading without waiting a tick.
                if full {
                    fx.push(Effect::LoadAudit {
                        after: m.audit_last_seq,
                    });
                } else {
                    m.audit_inflight = false;
                }
            }
            Loaded::Verify(v) => {
                m.status = Some(match &v {
                    Ok(x) => Ok(format!("audit log intact: {} entries", x.entries)),
                    Err(e) => Err(format!("audit verify: {e}")),
                });
                m.verify = Some(v);
            }
        },
        Msg::Done(r) => {
            m.status = Some(r);
            // Whatever changed shows everywhere it appears.
            fx.extend([
                Effect::LoadConnections,
                Effect::LoadAgents,
                Effect::LoadProfiles,
                Effect::LoadScopes,
            ]);
        }
        Msg::AgentAdded { agent, token } => {
            m.mode = Mode::Token { agent, token };
            fx.push(Effect::LoadAgents);
            fx.push(Effect::LoadScopes);
        }
        Msg::Failed(e) => {
            m.audit_inflight = false;
            m.status = Some(Err(e));
        }
    }
    fx
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000 + secs)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn entry(seq: u64, actor: &str, action: &str, target: &str, outcome: &str) -> Entry {
        Entry {
            seq,
            time: t(seq as i64),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            details: BTreeMap::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn conn(id: &str) -> ConnectionView {
        ConnectionView {
            id: id.into(),
            user: "alice".into(),
            service: "files".into(),
            kind: crate::store::ConnectionKind::Oauth,
            status: crate::store::ConnectionStatus::Active,
            status_reason: None,
            scopes: vec![],
            secret_fingerprint: None,
            created: t(0),
            updated: t(0),
            secret_set_at: None,
            rotation_due: false,
            access_expires: None,
            last_refresh: None,
            strikes: 0,
            refresh: Default::default(),
            dpop_jkt: None,
        }
    }

    #[test]
    fn revoke_needs_confirmation_and_no_cancels() {
        let mut m = Model::new(t(0), false);
        update(
            &mut m,
            Msg::Loaded(Loaded::Connections(vec![conn("c1"), conn("c2")])),
        );
        update(&mut m, Msg::Down);
        assert!(
            update(&mut m, Msg::AskRevoke).is_empty(),
            "no effect before y"
        );
        assert!(
            matches!(m.mode, Mode::Confirm(Confirm::RevokeConnection { ref id, .. }) if id == "c2")
        );
        assert!(update(&mut m, Msg::No).is_empty());
        assert_eq!(m.mode, Mode::Normal);
        update(&mut m, Msg::AskRevoke);
        assert_eq!(
            update(&mut m, Msg::Yes),
            vec![Effect::RevokeConnection("c2".into())]
        );
        // The result reloads every view.
        let fx = update(&mut m, Msg::Done(Ok("revoked".into())));
        assert!(fx.contains(&Effect::LoadConnections) && fx.contains(&Effect::LoadScopes));
    }

    #[test]
    fn cursor_stays_in_bounds_and_tabs_wrap() {
        let mut m = Model::new(t(0), false);
        update(&mut m, Msg::Up);
        assert_eq!(m.selected(), 0);
        update(
            &mut m,
            Msg::Loaded(Loaded::Connections(vec![conn("a"), conn("b")])),
        );
        for _ in 0..5 {
            update(&mut m, Msg::Down);
        }
        assert_eq!(m.selected(), 1);
        update(&mut m, Msg::PrevTab);
        assert_eq!(m.tab, Tab::Audit);
        update(&mut m, Msg::NextTab);
        assert_eq!(m.tab, Tab::Connections);
        // A shorter reload pulls the cursor back.
        update(&mut m, Msg::Loaded(Loaded::Connections(vec![conn("a")])));
        assert_eq!(m.selected(), 0);
    }

    /// Regression: a filter typed in another view also filtered the audit entries that
    /// arrived meanwhile; clearing it left the audit cursor mid-list, so the live tail stopped.
    #[test]
    fn the_live_tail_survives_a_filter_set_and_cleared_elsewhere() {
        let mut m = Model::new(t(0), false);
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(
                (1..=5)
                    .map(|i| entry(i, "admin", "user.add", "a", "ok"))
                    .collect(),
            )),
        );
        m.tab = Tab::Agents;
        m.filter = "ci-bot".into();
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![
                entry(6, "agent:ci-bot", "mcp.call", "demo", "ok"),
                entry(7, "admin", "agent.revoke", "ci-bot", "ok"),
                entry(8, "admin", "user.add", "b", "ok"),
            ])),
        );
        update(&mut m, Msg::ClearFilter);
        m.tab = Tab::Audit;
        assert_eq!(m.current(), Some(7), "the cursor is on the newest entry");
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![entry(
                9, "admin", "user.add", "c", "ok",
            )])),
        );
        assert_eq!(m.current(), Some(8), "and keeps following");
    }

    #[test]
    fn audit_filter_by_field_and_live_tail() {
        let mut m = Model::new(t(0), false);
        assert_eq!(
            update(&mut m, Msg::Loaded(Loaded::AuditCount(5))),
            vec![Effect::LoadAudit { after: 0 }]
        );
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![
                entry(1, "admin", "user.add", "alice", "ok"),
                entry(2, "agent:bot", "mcp.call", "files", "denied"),
                entry(3, "agent:bot", "mcp.call", "files", "ok"),
            ])),
        );
        m.tab = Tab::Audit;
        update(&mut m, Msg::StartFilter);
        for c in "actor:bot outcome:DENIED".chars() {
            update(&mut m, Msg::InputChar(c));
        }
        update(&mut m, Msg::InputSubmit);
        assert_eq!(m.audit_view, vec![1]);
        // Ticks poll for new entries (only one request in flight).
        let polls: usize = (0..TAIL_EVERY_TICKS * 2)
            .map(|i| update(&mut m, Msg::Tick(t(i64::from(i)))).len())
            .sum();
        assert_eq!(polls, 1);
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![entry(
                4,
                "agent:bot",
                "mcp.call",
                "files",
                "denied",
            )])),
        );
        assert_eq!(m.audit_view, vec![1, 3]);
        assert_eq!(m.selected(), 1, "the cursor follows the tail");
        // Entries already held are not duplicated.
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![entry(4, "x", "y", "z", "ok")])),
        );
        assert_eq!(m.audit.len(), 4);
        update(&mut m, Msg::ClearFilter);
        assert_eq!(m.audit_view.len(), 4);
    }

    #[test]
    fn the_audit_buffer_is_capped_and_indices_stay_valid() {
        let mut m = Model::new(t(0), false);
        let first: Vec<Entry> = (1..=AUDIT_CAP as u64)
            .map(|i| entry(i, "a", "b", "c", "ok"))
            .collect();
        update(&mut m, Msg::Loaded(Loaded::Audit(first)));
        update(
            &mut m,
            Msg::Loaded(Loaded::Audit(vec![entry(
                AUDIT_CAP as u64 + 1,
                "a",
                "b",
                "c",
                "ok",
            )])),
        );
        assert_eq!(m.audit.len(), AUDIT_CAP);
        assert_eq!(m.audit.front().map(|e| e.seq), Some(2));
        assert!(m.audit_view.iter().all(|i| *i < m.audit.len()));
    }

    #[test]
    fn agent_add_parses_its_prompt_and_the_token_is_shown_once() {
        let mut m = Model::new(t(0), false);
        m.tab = Tab::Agents;
        update(&mut m, Msg::StartAgentAdd);
        for c in "bot alice readers".chars() {
            update(&mut m, Msg::InputChar(c));
        }
        assert_eq!(
            update(&mut m, Msg::InputSubmit),
            vec![Effect::AgentAdd {
                name: "bot".into(),
                user: "alice".into(),
                profile: Some("readers".into())
            }]
        );
        update(
            &mut m,
            Msg::AgentAdded {
                agent: "bot".into(),
                token: ShownOnce(Zeroizing::new("sga_x".into())),
            },
        );
        assert!(matches!(m.mode, Mode::Token { .. }));
        update(&mut m, Msg::Back);
        assert_eq!(
            m.mode,
            Mode::Normal,
            "dismissed, the token is gone from the model"
        );
        // A malformed prompt is refused without an effect.
        update(&mut m, Msg::StartAgentAdd);
        update(&mut m, Msg::InputChar('x'));
        assert!(update(&mut m, Msg::InputSubmit).is_empty());
        assert!(matches!(m.status, Some(Err(_))));
    }

    #[test]
    fn profile_edit_starts_from_the_current_rules() {
        let mut m = Model::new(t(0), false);
        m.tab = Tab::Profiles;
        update(
            &mut m,
            Msg::Loaded(Loaded::Profiles(vec![Profile {
                id: "p".into(),
                name: "readers".into(),
                rules: vec![crate::store::ProfileRule {
                    service: "files".into(),
                    tools: vec!["read_*".into()],
                }],
                created: t(0),
            }])),
        );
        update(&mut m, Msg::EditProfile);
        assert_eq!(
            m.mode,
            Mode::Input {
                prompt: Prompt::ProfileEdit("readers".into()),
                text: "files:read_*".into()
            }
        );
        update(&mut m, Msg::InputChar(' '));
        for c in "search".chars() {
            update(&mut m, Msg::InputChar(c));
        }
        assert_eq!(
            update(&mut m, Msg::InputSubmit),
            vec![Effect::ProfileSet {
                name: "readers".into(),
                allow: vec!["files:read_*".into(), "search".into()]
            }]
        );
    }

    #[test]
    fn control_characters_never_enter_a_prompt() {
        let mut m = Model::new(t(0), false);
        update(&mut m, Msg::StartFilter);
        update(&mut m, Msg::InputChar('\u{1b}'));
        update(&mut m, Msg::InputChar('a'));
        assert!(matches!(&m.mode, Mode::Input { text, .. } if text == "a"));
    }
}
