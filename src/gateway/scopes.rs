//! The scope audit over real data, and the activity the console shows (agents' last seen).
//!
//! Use is folded from the audit log, which is durable and authoritative, into an in-memory
//! index that each query brings up to date incrementally (from the last sequence number it
//! saw), so the proxy adds no write on its hot path and a restart rebuilds the index.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Gateway, GatewayError};
use crate::config::{ProviderEndpoints, ServiceKind};
use crate::scopes::{ConnectionScopes, Hierarchy, Subject, ToolUse, assess};
use crate::store::ConnectionStatus;
use crate::store::audit::Entry;

const PAGE: usize = 10_000;

/// Folded `mcp.call` entries.
#[derive(Debug, Default)]
pub struct UsageIndex {
    last_seq: u64,
    by_connection: HashMap<String, ToolUse>,
    agent_last_seen: HashMap<String, OffsetDateTime>,
}

impl UsageIndex {
    pub fn fold(&mut self, e: &Entry) {
        self.last_seq = self.last_seq.max(e.seq);
        if e.action != "mcp.call" {
            return;
        }
        if let Some(agent) = e.actor.strip_prefix("agent:") {
            let t = self
                .agent_last_seen
                .entry(agent.to_owned())
                .or_insert(e.time);
            *t = (*t).max(e.time);
        }
        // Only calls that reached the service and succeeded exercised a scope.
        if e.outcome != "ok" {
            return;
        }
        let (Some(conn), Some(tool)) = (e.details.get("connection"), e.details.get("tool")) else {
            return;
        };
        let u = self.by_connection.entry(conn.clone()).or_default();
        let slot = u.tools.entry(tool.clone()).or_insert((e.time, 0));
        slot.0 = slot.0.max(e.time);
        slot.1 += 1;
    }
}

/// An agent with what the console shows beside it; never its token or token hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub name: String,
    pub id: String,
    pub user: String,
    pub profile: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_seen: Option<OffsetDateTime>,
}

impl Gateway {
    /// The scope hierarchy of the provider behind an OAuth service (presets only).
    pub fn scope_hierarchy(&self, service: &str) -> Hierarchy {
        let preset = match self.config.services.get(service).map(|s| &s.kind) {
            Some(ServiceKind::Oauth { provider, .. }) => self
                .config
                .providers
                .get(provider)
                .and_then(|p| match p.endpoints {
                    ProviderEndpoints::Preset(x) => Some(x),
                    _ => None,
                }),
            _ => None,
        };
        Hierarchy::of(preset)
    }

    /// The scopes a narrowing reconnect asks for, when `requested` (space-separated) is
    /// non-empty and covered by the service's configured scopes; `None` otherwise.
    pub fn narrowed_scopes(&self, service: &str, requested: &str) -> Option<Vec<String>> {
        let Some(ServiceKind::Oauth { scopes, .. }) =
            self.config.services.get(service).map(|s| &s.kind)
        else {
            return None;
        };
        let mut want: Vec<String> = Vec::new();
        for s in requested.split(' ').filter(|s| !s.is_empty()) {
            if !want.iter().any(|w| w == s) {
                want.push(s.to_owned());
            }
        }
        if !crate::scopes::narrowing_allowed(self.scope_hierarchy(service), scopes, &want) {
            return None;
        }
        // The configured protocol scopes (`offline_access`, `openid`) stay: narrowing the data
        // scopes must not cost the connection its refresh token or its subject.
        for p in scopes
            .iter()
            .filter(|s| crate::scopes::is_protocol_scope(s))
        {
            if !want.contains(p) {
                want.push(p.clone());
            }
        }
        Some(want)
    }

    /// Brings the usage index up to date with the audit log and runs `f` on it.
    fn with_usage<T>(&self, f: impl FnOnce(&UsageIndex) -> T) -> Result<T, GatewayError> {
        let mut idx = self
            .usage
            .lock()
            .map_err(|_| GatewayError::Invalid("usage index poisoned".into()))?;
        loop {
            let batch = self.store.read()?.audit_after(idx.last_seq, PAGE)?;
            for e in &batch {
                idx.fold(e);
            }
            if batch.len() < PAGE {
                break;
            }
        }
        Ok(f(&idx))
    }

    pub fn agent_views(&self) -> Result<Vec<AgentView>, GatewayError> {
        let r = self.store.read()?;
        let users = r.users()?;
        let profiles = r.profiles()?;
        let agents = r.agents()?;
        drop(r);
        self.with_usage(|idx| {
            agents
                .into_iter()
                .map(|a| AgentView {
                    user: users
                        .iter()
                        .find(|u| u.id == a.user_id)
                        .map_or_else(|| format!("(removed {})", a.user_id), |u| u.name.clone()),
                    profile: a.profile.as_ref().map(|p| {
                        profiles
                            .iter()
                            .find(|x| &x.id == p)
                            .map_or_else(|| p.clone(), |x| x.name.clone())
                    }),
                    last_seen: idx.agent_last_seen.get(&a.name).copied(),
                    name: a.name,
                    id: a.id,
                    created: a.created,
                    revoked: a.revoked,
                })
                .collect()
        })
    }

    /// `scopes report`: every connection that is not revoked, with its findings.
    pub fn scopes_report(&self) -> Result<Vec<ConnectionScopes>, GatewayError> {
        let r = self.store.read()?;
        let users = r.users()?;
        let profiles = r.profiles()?;
        let agents = r.agents()?;
        let connections = r.connections()?;
        drop(r);
        let base = self.config.public_url.as_str().trim_end_matches('/');
        self.with_usage(|idx| {
            connections
                .into_iter()
                .filter(|c| c.status != ConnectionStatus::Revoked)
                .map(|c| {
                    let svc = self.config.services.get(&c.service);
                    let empty = BTreeMap::new();
                    let tool_map = svc.map_or(&empty, |s| &s.tools);
                    let configured: &[String] = match svc.map(|s| &s.kind) {
                        Some(ServiceKind::Oauth { scopes, .. }) => scopes,
                        _ => &[],
                    };
                    let hierarchy = self.scope_hierarchy(&c.service);
                    // The tools any live agent of this user may call on this service.
                    let service = c.service.as_str();
                    let allowed: BTreeSet<String> = agents
                        .iter()
                        .filter(|a| a.user_id == c.user_id && a.revoked.is_none())
                        .flat_map(|a| {
                            let p = a
                                .profile
                                .as_ref()
                                .and_then(|id| profiles.iter().find(|x| &x.id == id));
                            tool_map
                                .keys()
                                .filter(move |t| {
                                    crate::policy::tool_allowed(p, service, t)
                                        == crate::policy::Decision::Allow
                                })
                                .cloned()
                        })
                        .collect();
                    let (needed, exercised, unmapped_tools, findings, narrowed) =
                        assess(&Subject {
                            granted: &c.scopes,
                            configured,
                            tool_map,
                            allowed_tools: &allowed,
                            usage: idx.by_connection.get(&c.id),
                            hierarchy,
                        });
                    let fix_url = narrowed.as_ref().map(|n| {
                        let q = url::form_urlencoded::Serializer::new(String::new())
                            .append_pair("narrow", &c.service)
                            .append_pair("scope", &n.join(" "))
                            .finish();
                        format!("{base}/connect?{q}")
                    });
                    ConnectionScopes {
                        user: users
                            .iter()
                            .find(|u| u.id == c.user_id)
                            .map_or_else(|| format!("(removed {})", c.user_id), |u| u.name.clone()),
                        connection: c.id,
                        service: c.service,
                        status: c.status.as_str().to_owned(),
                        granted: c.scopes,
                        needed,
                        exercised,
                        unmapped_tools,
                        findings,
                        narrowed,
                        fix_url,
                    }
                })
                .collect()
        })
    }
}
