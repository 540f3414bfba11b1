//! Scope audit: which of a connection's granted scopes its agents may need (through the tools
//! their profiles allow), which they actually exercised, and what a narrower grant would be.
//! Pure functions over plain data, so the report can be unit-tested without a server.
//!
//! "Exercised" is derived from the audit log (each successful `mcp.call` names its tool and
//! connection), so the proxy's hot path writes nothing extra.

pub mod builtin;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Preset;

/// Scopes that are about the protocol, not about the service's data (OIDC identity, refresh
/// tokens). Never reported as over-scoped.
const PROTOCOL_SCOPES: &[&str] = &["openid", "offline_access", "profile", "email"];

const GOOGLE_PREFIX: &str = "https://www.googleapis.com/auth/";

/// Direct "broad ⊃ narrow" pairs each preset's provider documents. Google's are written
/// without the `https://www.googleapis.com/auth/` prefix, which is stripped before lookup.
const GOOGLE: &[(&str, &str)] = &[
    ("calendar", "calendar.readonly"),
    ("calendar", "calendar.events"),
    ("calendar.events", "calendar.events.readonly"),
    ("calendar.readonly", "calendar.events.readonly"),
    ("drive", "drive.readonly"),
    ("drive", "drive.file"),
    ("drive", "drive.metadata"),
    ("drive.metadata", "drive.metadata.readonly"),
    ("drive.readonly", "drive.metadata.readonly"),
    ("https://mail.google.com/", "gmail.modify"),
    ("gmail.modify", "gmail.readonly"),
    ("gmail.modify", "gmail.compose"),
    ("gmail.modify", "gmail.labels"),
    ("gmail.compose", "gmail.send"),
    ("gmail.readonly", "gmail.metadata"),
    ("contacts", "contacts.readonly"),
    ("spreadsheets", "spreadsheets.readonly"),
    ("documents", "documents.readonly"),
    ("tasks", "tasks.readonly"),
];

const GITHUB: &[(&str, &str)] = &[
    ("repo", "public_repo"),
    ("repo", "repo:status"),
    ("repo", "repo_deployment"),
    ("repo", "repo:invite"),
    ("repo", "security_events"),
    ("user", "read:user"),
    ("user", "user:email"),
    ("user", "user:follow"),
    ("admin:org", "write:org"),
    ("write:org", "read:org"),
    ("admin:repo_hook", "write:repo_hook"),
    ("write:repo_hook", "read:repo_hook"),
    ("admin:public_key", "write:public_key"),
    ("write:public_key", "read:public_key"),
    ("write:packages", "read:packages"),
    ("project", "read:project"),
];

/// Slack's `chat:write.public` and `users:read.email` are add-ons, not narrower forms of
/// `chat:write` and `users:read`: no pairs are known to be safe to narrow to.
const SLACK: &[(&str, &str)] = &[];

const MICROSOFT: &[(&str, &str)] = &[
    ("Files.ReadWrite.All", "Files.ReadWrite"),
    ("Files.ReadWrite.All", "Files.Read.All"),
    ("Files.ReadWrite", "Files.Read"),
    ("Files.Read.All", "Files.Read"),
    ("Mail.ReadWrite", "Mail.Read"),
    ("Mail.Read", "Mail.ReadBasic"),
    ("Calendars.ReadWrite", "Calendars.Read"),
    ("Calendars.Read", "Calendars.ReadBasic"),
    ("Contacts.ReadWrite", "Contacts.Read"),
    ("Sites.ReadWrite.All", "Sites.Read.All"),
    ("User.ReadWrite", "User.Read"),
    ("User.Read.All", "User.ReadBasic.All"),
    ("Tasks.ReadWrite", "Tasks.Read"),
];

/// How a scope reads in a narrow column: Google's and Microsoft Graph's scope URLs without
/// their shared prefix (the detail view and `scopes report` show them whole).
pub fn short_form(scope: &str) -> &str {
    scope
        .strip_prefix(GOOGLE_PREFIX)
        .or_else(|| scope.strip_prefix("https://graph.microsoft.com/"))
        .unwrap_or(scope)
}

/// What one provider knows about its scopes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hierarchy {
    preset: Option<Preset>,
}

impl Hierarchy {
    pub fn of(preset: Option<Preset>) -> Self {
        Self { preset }
    }

    fn pairs(&self) -> &'static [(&'static str, &'static str)] {
        match self.preset {
            Some(Preset::Google) => GOOGLE,
            Some(Preset::Github | Preset::GithubApp) => GITHUB,
            Some(Preset::Slack) => SLACK,
            Some(Preset::Microsoft) => MICROSOFT,
            None => &[],
        }
    }

    fn short<'a>(&self, s: &'a str) -> &'a str {
        match self.preset {
            Some(Preset::Google) => s.strip_prefix(GOOGLE_PREFIX).unwrap_or(s),
            // Microsoft Graph scopes may be written with their resource URL.
            Some(Preset::Microsoft) => s.strip_prefix("https://graph.microsoft.com/").unwrap_or(s),
            _ => s,
        }
    }

    /// Whether a grant of `broad` also grants `narrow` (reflexive, transitive).
    pub fn implies(&self, broad: &str, narrow: &str) -> bool {
        let (b, n) = (self.short(broad), self.short(narrow));
        if b == n {
            return true;
        }
        // Depth-first over the (small, acyclic) table; bounded by its size.
        let mut stack = vec![b];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            for (hi, lo) in self.pairs() {
                if *hi == x {
                    if *lo == n {
                        return true;
                    }
                    stack.push(lo);
                }
            }
        }
        false
    }

    /// Whether some scope of `set` implies `scope`.
    pub fn covered(&self, set: &[String], scope: &str) -> bool {
        set.iter().any(|g| self.implies(g, scope))
    }

    /// The set without members implied by another member (`calendar` absorbs
    /// `calendar.readonly`), sorted.
    pub fn minimal(&self, set: &BTreeSet<String>) -> Vec<String> {
        set.iter()
            .filter(|s| {
                !set.iter()
                    .any(|o| o != *s && self.implies(o, s) && !self.implies(s, o))
            })
            .cloned()
            .collect()
    }
}

pub fn is_protocol_scope(s: &str) -> bool {
    PROTOCOL_SCOPES.contains(&s)
}

/// A reconnect may ask only for scopes the service's configured set already grants (itself or
/// through the provider's hierarchy): narrowing, never widening — protocol scopes included
/// (`openid`, `offline_access` only when configured).
pub fn narrowing_allowed(h: Hierarchy, configured: &[String], requested: &[String]) -> bool {
    !requested.is_empty()
        && requested.len() <= 64
        && requested.iter().all(|r| h.covered(configured, r))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Granted, and no tool any of the user's agents may call needs it.
    Unneeded,
    /// Granted, but only narrower scopes are needed (`calendar` where `calendar.readonly`
    /// serves).
    Broader,
    /// Needed by an allowed tool but no call has used it yet.
    Unexercised,
    /// An allowed tool needs it and the grant does not include it.
    Missing,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unneeded => "granted, never needed",
            Self::Broader => "broader than needed",
            Self::Unexercised => "granted, never exercised",
            Self::Missing => "needed, not granted",
        }
    }

    /// Over-scoping: the grant is wider than its use.
    pub fn over_scoped(self) -> bool {
        !matches!(self, Self::Missing)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub scope: String,
    /// For `Broader`: the narrower needed scopes it covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instead: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exercised {
    pub scope: String,
    #[serde(with = "time::serde::rfc3339")]
    pub last_used: OffsetDateTime,
    pub calls: u64,
}

/// One connection's line in `scopes report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionScopes {
    pub connection: String,
    pub user: String,
    pub service: String,
    pub status: String,
    pub granted: Vec<String>,
    /// `None` when the service has no tool → scopes map (nothing can be said about need).
    pub needed: Option<Vec<String>>,
    pub exercised: Vec<Exercised>,
    /// Tools called successfully that the map does not name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmapped_tools: Vec<String>,
    pub findings: Vec<Finding>,
    /// The narrower set a reconnect should ask for, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowed: Option<Vec<String>>,
    /// Where the user reconnects with `narrowed` (a page of the gateway, no credential in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix_url: Option<String>,
}

impl ConnectionScopes {
    pub fn over_scoped(&self) -> bool {
        self.findings.iter().any(|f| f.kind.over_scoped())
    }
}

/// Per-connection use of tools, folded from `mcp.call` audit entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolUse {
    /// tool → (last successful call, count)
    pub tools: BTreeMap<String, (OffsetDateTime, u64)>,
}

/// What `assess` needs to know about one connection.
pub struct Subject<'a> {
    pub granted: &'a [String],
    /// The service's configured scopes (what a connect asks for).
    pub configured: &'a [String],
    /// Tool → scopes it needs; empty when unknown.
    pub tool_map: &'a BTreeMap<String, Vec<String>>,
    /// Tools of the map that some live agent of the user may call.
    pub allowed_tools: &'a BTreeSet<String>,
    pub usage: Option<&'a ToolUse>,
    pub hierarchy: Hierarchy,
}

/// needed (None: no tool map), exercised, unmapped tools, findings, narrowed set.
pub type Assessed = (
    Option<Vec<String>>,
    Vec<Exercised>,
    Vec<String>,
    Vec<Finding>,
    Option<Vec<String>>,
);

/// The audit of one connection: needed, exercised, findings and the narrowed set.
pub fn assess(s: &Subject<'_>) -> Assessed {
    let h = s.hierarchy;
    let mut exercised: BTreeMap<String, (OffsetDateTime, u64)> = BTreeMap::new();
    let mut unmapped = Vec::new();
    if let Some(u) = s.usage {
        for (tool, (at, n)) in &u.tools {
            match s.tool_map.get(tool) {
                Some(scopes) => {
                    for sc in scopes {
                        let e = exercised.entry(sc.clone()).or_insert((*at, 0));
                        e.0 = e.0.max(*at);
                        e.1 += n;
                    }
                }
                None => unmapped.push(tool.clone()),
            }
        }
    }
    let exercised: Vec<Exercised> = exercised
        .into_iter()
        .map(|(scope, (last_used, calls))| Exercised {
            scope,
            last_used,
            calls,
        })
        .collect();
    if s.tool_map.is_empty() {
        return (None, exercised, unmapped, Vec::new(), None);
    }
    let needed: BTreeSet<String> = s
        .allowed_tools
        .iter()
        .filter_map(|t| s.tool_map.get(t))
        .flatten()
        .cloned()
        .collect();
    let data_granted: Vec<&String> = s.granted.iter().filter(|g| !is_protocol_scope(g)).collect();
    let mut findings = Vec::new();
    for n in &needed {
        if !h.covered(s.granted, n) {
            findings.push(Finding {
                kind: FindingKind::Missing,
                scope: n.clone(),
                instead: Vec::new(),
            });
        }
    }
    let used = |g: &str| exercised.iter().any(|e| h.implies(g, &e.scope));
    for g in &data_granted {
        if needed.contains(*g) {
            if !used(g) {
                findings.push(Finding {
                    kind: FindingKind::Unexercised,
                    scope: (*g).clone(),
                    instead: Vec::new(),
                });
            }
            continue;
        }
        let narrower: Vec<String> = needed.iter().filter(|n| h.implies(g, n)).cloned().collect();
        findings.push(Finding {
            kind: if narrower.is_empty() {
                FindingKind::Unneeded
            } else {
                FindingKind::Broader
            },
            scope: (*g).clone(),
            instead: narrower,
        });
    }
    // The narrowed grant: what calls exercised when there were calls, else what the allowed
    // tools need; only scopes the current grant covers, so the fix never widens.
    let basis: BTreeSet<String> = if exercised.is_empty() {
        needed.clone()
    } else {
        exercised.iter().map(|e| e.scope.clone()).collect()
    };
    let basis: BTreeSet<String> = basis
        .into_iter()
        .filter(|b| {
            h.covered(s.granted, b) && narrowing_allowed(h, s.configured, std::slice::from_ref(b))
        })
        .collect();
    let narrowed = h.minimal(&basis);
    let granted_set: BTreeSet<&String> = data_granted.iter().copied().collect();
    let same =
        narrowed.len() == granted_set.len() && narrowed.iter().all(|n| granted_set.contains(n));
    let offer = !narrowed.is_empty() && !same && findings.iter().any(|f| f.kind.over_scoped());
    (
        Some(needed.into_iter().collect()),
        exercised,
        unmapped,
        findings,
        offer.then_some(narrowed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    fn map(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(t, s)| ((*t).to_owned(), v(s))).collect()
    }

    #[test]
    fn google_hierarchy_is_transitive_and_prefix_blind() {
        let h = Hierarchy::of(Some(Preset::Google));
        assert!(h.implies(
            "https://www.googleapis.com/auth/calendar",
            "calendar.readonly"
        ));
        assert!(h.implies(
            "calendar",
            "https://www.googleapis.com/auth/calendar.events.readonly"
        ));
        assert!(!h.implies("calendar.readonly", "calendar"));
        assert!(h.implies("https://mail.google.com/", "gmail.metadata"));
        // Without a preset nothing but equality is known.
        assert!(!Hierarchy::of(None).implies("calendar", "calendar.readonly"));
    }

    #[test]
    fn narrowing_never_widens() {
        let h = Hierarchy::of(Some(Preset::Google));
        let conf = v(&["calendar"]);
        assert!(narrowing_allowed(h, &conf, &v(&["calendar.readonly"])));
        assert!(!narrowing_allowed(h, &conf, &v(&["drive"])));
        assert!(!narrowing_allowed(
            h,
            &v(&["calendar.readonly"]),
            &v(&["calendar"])
        ));
        assert!(!narrowing_allowed(h, &conf, &[]));
    }

    #[test]
    fn a_write_scope_never_exercised_is_over_scoped_and_narrowed_to_read() {
        let tools = map(&[
            ("read_file", &["files.read"]),
            ("write_file", &["files.write"]),
        ]);
        let allowed: BTreeSet<String> = tools.keys().cloned().collect();
        let t = OffsetDateTime::UNIX_EPOCH;
        let usage = ToolUse {
            tools: [("read_file".to_owned(), (t, 3))].into(),
        };
        let granted = v(&["files.read", "files.write"]);
        let (needed, ex, _, findings, narrowed) = assess(&Subject {
            granted: &granted,
            configured: &granted,
            tool_map: &tools,
            allowed_tools: &allowed,
            usage: Some(&usage),
            hierarchy: Hierarchy::default(),
        });
        assert_eq!(needed, Some(v(&["files.read", "files.write"])));
        assert_eq!(ex[0].scope, "files.read");
        assert_eq!(ex[0].calls, 3);
        assert_eq!(
            findings,
            vec![Finding {
                kind: FindingKind::Unexercised,
                scope: "files.write".into(),
                instead: vec![]
            }]
        );
        assert_eq!(narrowed, Some(v(&["files.read"])));
    }

    #[test]
    fn broader_unneeded_and_missing() {
        let h = Hierarchy::of(Some(Preset::Google));
        let tools = map(&[
            ("list_events", &["calendar.readonly"]),
            ("send", &["gmail.send"]),
        ]);
        let allowed: BTreeSet<String> = tools.keys().cloned().collect();
        let granted = v(&["calendar", "drive", "openid"]);
        let conf = v(&["calendar", "drive", "gmail.send"]);
        let (_, _, _, findings, narrowed) = assess(&Subject {
            granted: &granted,
            configured: &conf,
            tool_map: &tools,
            allowed_tools: &allowed,
            usage: None,
            hierarchy: h,
        });
        let kinds: Vec<(FindingKind, &str)> = findings
            .iter()
            .map(|f| (f.kind, f.scope.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (FindingKind::Missing, "gmail.send"),
                (FindingKind::Broader, "calendar"),
                (FindingKind::Unneeded, "drive"),
            ]
        );
        assert_eq!(findings[1].instead, v(&["calendar.readonly"]));
        // Only what the grant covers: gmail.send is missing, so it is not in the narrowed set.
        assert_eq!(narrowed, Some(v(&["calendar.readonly"])));
    }

    /// The built-in GitHub MCP server map, through a real config: a grant of `repo read:org
    /// gist` whose agents may only read issues needs `repo` alone.
    #[test]
    fn the_builtin_github_map_finds_unneeded_scopes() {
        let c = crate::config::Config::parse(
            r#"
            [providers.gh]
            preset = "github"
            client_id = "c"
            client_secret_env = "GH_SECRET"
            [services.github]
            provider = "gh"
            mcp_url = "https://api.githubcopilot.com/mcp/"
            scopes = ["repo", "read:org", "gist"]
            "#,
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let tools = &c.services["github"].tools;
        assert_eq!(tools["get_teams"], v(&["read:org"]));
        let allowed: BTreeSet<String> = ["list_issues", "issue_read"].map(String::from).into();
        let granted = v(&["repo", "read:org", "gist"]);
        let (needed, _, _, findings, narrowed) = assess(&Subject {
            granted: &granted,
            configured: &granted,
            tool_map: tools,
            allowed_tools: &allowed,
            usage: None,
            hierarchy: Hierarchy::of(Some(Preset::Github)),
        });
        assert_eq!(needed, Some(v(&["repo"])));
        let kinds: Vec<(FindingKind, &str)> = findings
            .iter()
            .map(|f| (f.kind, f.scope.as_str()))
            .collect();
        assert!(
            kinds.contains(&(FindingKind::Unneeded, "read:org")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&(FindingKind::Unneeded, "gist")),
            "{kinds:?}"
        );
        assert_eq!(narrowed, Some(v(&["repo"])));
    }

    #[test]
    fn no_tool_map_means_no_claims() {
        let granted = v(&["x"]);
        let (needed, _, _, findings, narrowed) = assess(&Subject {
            granted: &granted,
            configured: &granted,
            tool_map: &BTreeMap::new(),
            allowed_tools: &BTreeSet::new(),
            usage: None,
            hierarchy: Hierarchy::default(),
        });
        assert_eq!((needed, findings.len(), narrowed), (None, 0, None));
    }
}
