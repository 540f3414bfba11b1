//! Acting on a verified provider revocation signal (I18): the connections of the named account
//! lose their sealed tokens at once and go to `needs_reauth`, so the agent's next call gets the
//! reconnect answer. One audit entry per event, naming connections and provider ids, never a
//! token. Callers verify the signal first; nothing here checks signatures.

use time::OffsetDateTime;

use super::{Gateway, GatewayError};
use crate::store::audit::Event;
use crate::store::{Connection, ConnectionStatus, ProviderSubject};

/// The sender's clock and ours may disagree, and its times are whole seconds; a grant counts
/// as later than an event only beyond this, since a missed revocation is worse than one
/// reconnection too many.
const CLOCK_TOLERANCE: time::Duration = time::Duration::minutes(5);

/// Which accounts an event names, within the providers it was verified for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// One account: a GitHub user id, an OIDC `sub`, a Slack user (with its team).
    Account { team: Option<String>, id: String },
    /// Every account of a Slack workspace (`app_uninstalled`).
    Team(String),
}

impl Affected {
    fn matches(&self, s: &ProviderSubject) -> bool {
        match self {
            Self::Account { team, id } => {
                s.id == *id && (team.is_none() || s.team.as_deref() == team.as_deref())
            }
            Self::Team(t) => s.team.as_deref() == Some(t.as_str()),
        }
    }
}

/// A verified event that revokes access.
#[derive(Debug, Clone)]
pub struct ProviderRevocation {
    /// `github`, `slack` or `risc`: who sent it, for the audit entry's actor.
    pub source: &'static str,
    /// The configured providers whose credentials verified the event.
    pub providers: Vec<String>,
    /// What happened, e.g. `github_app_authorization.revoked`.
    pub kind: String,
    pub affected: Vec<Affected>,
    /// The sender's id for the event (delivery id, `event_id`, `jti`), when it has one.
    pub event_id: Option<String>,
    /// When the event happened, as signed by the sender. A connection whose tokens were issued
    /// after it (beyond `CLOCK_TOLERANCE`) belongs to a later grant and is left alone, so a
    /// replayed or late event never undoes a reconnection.
    pub occurred: Option<OffsetDateTime>,
}

/// What an event did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub cleaned: Vec<String>,
    /// Matching connections granted after the event.
    pub newer: usize,
}

impl Gateway {
    /// Cleans up every live connection the event names, in one store commit with its audit
    /// entry (store first, then the vault: the module comment of `gateway`).
    pub fn apply_revocation(&self, ev: &ProviderRevocation) -> Result<Outcome, GatewayError> {
        let (outcome, records) = self.store.write(|t| {
            let mut outcome = Outcome::default();
            let mut records = Vec::new();
            let hit = |c: &Connection| {
                c.subject.as_ref().is_some_and(|s| {
                    ev.providers.contains(&s.provider) && ev.affected.iter().any(|a| a.matches(s))
                })
            };
            for mut c in t.connections()?.into_iter().filter(hit) {
                if !c.status.holds_secrets() {
                    continue;
                }
                if let (Some(at), Some(set)) = (ev.occurred, c.secret_set_at)
                    && set > at + CLOCK_TOLERANCE
                {
                    outcome.newer += 1;
                    continue;
                }
                records.extend(c.secret_record.take());
                c.status = ConnectionStatus::NeedsReauth;
                c.status_reason = Some(format!(
                    "the provider revoked access ({}); reconnect",
                    ev.kind
                ));
                c.updated = t.now;
                t.put_connection(&c)?;
                outcome.cleaned.push(c.id);
            }
            let mut e = Event::new(
                &format!("provider:{}", ev.source),
                "webhook.revocation",
                &ev.kind,
                if outcome.cleaned.is_empty() {
                    "no_match"
                } else {
                    "ok"
                },
            )
            .detail("providers", ev.providers.join(","))
            .detail("connections", outcome.cleaned.join(","))
            .detail("accounts", describe(&ev.affected));
            if let Some(id) = &ev.event_id {
                e = e.detail("event_id", id.as_str());
            }
            if outcome.newer > 0 {
                e = e.detail("left_newer_grants", outcome.newer.to_string());
            }
            t.audit(e)?;
            Ok((outcome, records))
        })?;
        self.delete_secrets(&records);
        Ok(outcome)
    }

    /// Records a verified event that asked for nothing to be cleaned up (a SET verification
    /// event, an event type the gateway does not act on).
    pub fn audit_provider_event(
        &self,
        source: &str,
        kind: &str,
        outcome: &str,
        event_id: Option<&str>,
    ) -> Result<(), GatewayError> {
        let mut e = Event::new(
            &format!("provider:{source}"),
            "webhook.event",
            kind,
            outcome,
        );
        if let Some(id) = event_id {
            e = e.detail("event_id", id);
        }
        self.audit_event(e)
    }
}

fn describe(affected: &[Affected]) -> String {
    affected
        .iter()
        .map(|a| match a {
            Affected::Account { team: Some(t), id } => format!("{t}/{id}"),
            Affected::Account { team: None, id } => id.clone(),
            Affected::Team(t) => format!("{t}/*"),
        })
        .collect::<Vec<_>>()
        .join(",")
}
