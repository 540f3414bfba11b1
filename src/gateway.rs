//! The gateway's state and its operations on it: the unlocked vault, the store and the
//! config, and the actions admins take. Every action is audited in the same store commit
//! that records it (I7).
//!
//! The two files cannot commit together, so writes have a fixed order: a new secret goes into
//! the vault first, under a fresh record name, and the store commit that points a connection at
//! it comes second; deletion runs the other way (store first, then vault). Whatever a crash
//! leaves between the two is resolved by `reconcile` at start: a sealed record no live
//! connection points at is deleted; a live connection whose record is missing goes to
//! `needs_reauth`.

pub mod agents;
pub mod connect;
pub mod provider_events;
pub mod scopes;

use std::collections::BTreeSet;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{Config, ServiceKind};
use crate::secret::ApiKey;
use crate::store::audit::{Entry, Event, Verified};
use crate::store::{Connection, ConnectionKind, ConnectionStatus, Store, StoreError, User};
use crate::vault::{Vault, VaultError};

pub const SECRET_PREFIX: &str = "secret/";
const API_KEY_FIELD: &str = "api_key";
const MAX_API_KEY_BYTES: usize = 8 * 1024;
const MAX_ORPHANS_DELETED_AT_START: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

pub struct Gateway {
    pub config: Config,
    pub vault: Vault,
    pub store: Store,
    /// Authenticated agents by token hash (never the token), so the proxy's hot path needs
    /// no read transaction. See `agents::PrincipalCache` for how revocation stays immediate.
    pub(crate) principals: agents::PrincipalCache,
    /// Tool use folded from the audit log (scope audit, agents' last seen).
    pub(crate) usage: std::sync::Mutex<scopes::UsageIndex>,
    /// API keys past `rotate_after_days` at the last `rotation_sweep` (for /metrics).
    pub overdue_api_keys: std::sync::atomic::AtomicU64,
}

/// One row of `connection list`: metadata and a fingerprint, never the secret.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ConnectionView {
    pub id: String,
    pub user: String,
    pub service: String,
    pub kind: ConnectionKind,
    pub status: ConnectionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub secret_set_at: Option<OffsetDateTime>,
    /// The API key is older than the service's `rotate_after_days`.
    pub rotation_due: bool,
    /// When the access token expires (OAuth), if the provider said.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub access_expires: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_refresh: Option<OffsetDateTime>,
    /// Consecutive definitive refresh rejections.
    #[serde(default)]
    pub strikes: u32,
    /// In-flight marker, transient failures, backoff (the token lifecycle).
    #[serde(default, skip_serializing_if = "crate::store::RefreshState::is_clear")]
    pub refresh: crate::store::RefreshState,
    /// The thumbprint of the DPoP key the tokens are bound to (RFC 9449), when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub orphan_secrets_deleted: usize,
    pub connections_needing_reauth: usize,
}

/// Who asked for an action, as recorded in the audit log.
pub const ADMIN: &str = "admin";
pub const SYSTEM: &str = "system";

/// User names appear in URLs, logs and the console.
pub fn check_user_name(name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::Invalid(
            "user names use 1-64 letters, digits and - _ . @".to_owned(),
        ))
    }
}

impl Gateway {
    pub fn new(config: Config, vault: Vault, store: Store) -> Self {
        Self {
            config,
            vault,
            store,
            principals: agents::PrincipalCache::default(),
            usage: Default::default(),
            overdue_api_keys: Default::default(),
        }
    }

    /// The API-key rotation policy (`rotate_after_days`): keys past their age are flagged in
    /// the audit log once each (one entry per key, in one commit) and counted for /metrics.
    /// Streams the connections; returns how many keys are overdue.
    pub fn rotation_sweep(&self) -> Result<u64, GatewayError> {
        let now = OffsetDateTime::now_utc();
        let mut overdue = 0u64;
        let mut newly = Vec::new();
        self.store.read()?.for_each_connection(|c| {
            if self.rotation_due(&c, now) {
                overdue += 1;
                if c.refresh.rotation_flagged.is_none() {
                    newly.push(c.id);
                }
            }
            Ok(())
        })?;
        for chunk in newly.chunks(1000) {
            self.store.write_optional(|t| {
                let mut any = false;
                for id in chunk {
                    let Some(mut c) = t.connection(id)? else {
                        continue;
                    };
                    if !self.rotation_due(&c, now) || c.refresh.rotation_flagged.is_some() {
                        continue;
                    }
                    c.refresh.rotation_flagged = Some(t.now);
                    t.put_connection(&c)?;
                    let age = c.secret_set_at.map_or(0, |s| (now - s).whole_days());
                    t.audit(
                        Event::new(SYSTEM, "apikey.rotation_due", &c.id, "flagged")
                            .detail("service", &c.service)
                            .detail("age_days", age.to_string())
                            .detail("key", c.secret_fingerprint.as_deref().unwrap_or("-")),
                    )?;
                    any = true;
                }
                Ok(any.then_some(()))
            })?;
        }
        self.overdue_api_keys
            .store(overdue, std::sync::atomic::Ordering::Relaxed);
        Ok(overdue)
    }

    fn rotation_due(&self, c: &Connection, now: OffsetDateTime) -> bool {
        match self.config.services.get(&c.service).map(|s| &s.kind) {
            Some(ServiceKind::ApiKey {
                rotate_after_days: Some(days),
                ..
            }) => {
                c.status.holds_secrets()
                    && c.secret_set_at
                        .is_some_and(|t| now - t > time::Duration::days(i64::from(*days)))
            }
            _ => false,
        }
    }

    pub fn user_add(&self, name: &str) -> Result<User, GatewayError> {
        check_user_name(name)?;
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            created: OffsetDateTime::now_utc(),
        };
        self.store.write(|t| {
            t.insert_user(&user)?;
            t.audit(Event::new(ADMIN, "user.add", &user.name, "ok").detail("user_id", &user.id))?;
            Ok(())
        })?;
        Ok(user)
    }

    pub fn users(&self) -> Result<Vec<User>, GatewayError> {
        Ok(self.store.read()?.users()?)
    }

    /// Removes a user after revoking every connection they hold.
    pub fn user_remove(&self, name: &str) -> Result<(), GatewayError> {
        let mut removed_user = false;
        let records = self.store.write(|t| {
            let user = t
                .user_by_name(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no user named {name}")))?;
            let mut records = Vec::new();
            for mut c in t
                .connections()?
                .into_iter()
                .filter(|c| c.user_id == user.id)
            {
                if let Some(r) = c.secret_record.take() {
                    records.push(r);
                }
                if c.status != ConnectionStatus::Revoked {
                    c.status = ConnectionStatus::Revoked;
                    c.status_reason = Some("user removed".into());
                    c.updated = t.now;
                    t.put_connection(&c)?;
                }
            }
            // Their agents go too: a token of a removed user must not keep working.
            for mut a in t
                .agents()?
                .into_iter()
                .filter(|a| a.user_id == user.id && a.revoked.is_none())
            {
                a.revoked = Some(t.now);
                t.put_agent(&a)?;
            }
            t.remove_user(&user)?;
            removed_user = true;
            t.audit(
                Event::new(ADMIN, "user.remove", name, "ok")
                    .detail("user_id", &user.id)
                    .detail("connections_revoked", records.len().to_string()),
            )?;
            Ok(records)
        })?;
        if removed_user {
            self.principals.invalidate();
        }
        self.delete_secrets(&records);
        Ok(())
    }

    pub fn connections(&self, user: Option<&str>) -> Result<Vec<ConnectionView>, GatewayError> {
        let r = self.store.read()?;
        let users = r.users()?;
        let name_of = |id: &str| users.iter().find(|u| u.id == id).map(|u| u.name.clone());
        if let Some(u) = user
            && !users.iter().any(|x| x.name == u)
        {
            return Err(GatewayError::NotFound(format!("no user named {u}")));
        }
        let now = OffsetDateTime::now_utc();
        Ok(r.connections()?
            .into_iter()
            .map(|c| {
                let user =
                    name_of(&c.user_id).unwrap_or_else(|| format!("(removed {})", c.user_id));
                (user, c)
            })
            .filter(|(u, _)| user.is_none_or(|f| f == u))
            .map(|(user, c)| self.view(user, c, now))
            .collect())
    }

    fn view(&self, user: String, c: Connection, now: OffsetDateTime) -> ConnectionView {
        let rotation_due = self.rotation_due(&c, now);
        ConnectionView {
            id: c.id,
            user,
            service: c.service,
            kind: c.kind,
            status: c.status,
            status_reason: c.status_reason,
            scopes: c.scopes,
            secret_fingerprint: c.secret_fingerprint,
            created: c.created,
            updated: c.updated,
            secret_set_at: c.secret_set_at,
            rotation_due,
            access_expires: c.access_expires,
            last_refresh: c.last_refresh,
            strikes: c.strikes,
            refresh: c.refresh.clone(),
            dpop_jkt: c.dpop_jkt,
        }
    }

    /// Stores (or rotates) the API key of `user` for an `api_key` service.
    pub fn apikey_set(
        &self,
        service: &str,
        user: &str,
        key: &ApiKey,
    ) -> Result<Connection, GatewayError> {
        let svc = self.config.services.get(service).ok_or_else(|| {
            GatewayError::NotFound(format!("no service named {service} in the config"))
        })?;
        if !svc.is_api_key() {
            return Err(GatewayError::Invalid(format!(
                "service {service} is an OAuth service; connect it from the web page instead"
            )));
        }
        check_api_key(key)?;
        let fingerprint = self.vault.fingerprint(key.expose_secret());
        // Vault first, under a record nothing points at yet (see the module comment).
        let record = format!("{SECRET_PREFIX}{}", uuid::Uuid::new_v4());
        self.vault
            .put(&record, API_KEY_FIELD, key.expose_secret())?;
        let result = self.store.write(|t| {
            let u = t
                .user_by_name(user)?
                .ok_or_else(|| StoreError::NotFound(format!("no user named {user}")))?;
            let existing = t.live_connection(&u.id, service)?;
            let (mut conn, old_record, action) = match existing {
                Some(mut c) => {
                    let old = c.secret_record.take();
                    (c, old, "apikey.rotate")
                }
                None => (
                    Connection {
                        id: uuid::Uuid::now_v7().to_string(),
                        user_id: u.id.clone(),
                        service: service.to_owned(),
                        kind: ConnectionKind::ApiKey,
                        status: ConnectionStatus::Active,
                        status_reason: None,
                        secret_record: None,
                        secret_fingerprint: None,
                        scopes: Vec::new(),
                        created: t.now,
                        updated: t.now,
                        secret_set_at: None,
                        access_expires: None,
                        issuer: None,
                        strikes: 0,
                        last_refresh: None,
                        refresh: Default::default(),
                        subject: None,
                        dpop_jkt: None,
                    },
                    None,
                    "apikey.set",
                ),
            };
            conn.status = ConnectionStatus::Active;
            conn.status_reason = None;
            conn.secret_record = Some(record.clone());
            conn.secret_fingerprint = Some(fingerprint.clone());
            conn.secret_set_at = Some(t.now);
            // A new key starts a new rotation period.
            conn.refresh.rotation_flagged = None;
            conn.updated = t.now;
            t.put_connection(&conn)?;
            t.audit(
                Event::new(ADMIN, action, &conn.id, "ok")
                    .detail("service", service)
                    .detail("user", user)
                    .detail("key", &fingerprint),
            )?;
            Ok((conn, old_record))
        });
        match result {
            Ok((conn, old)) => {
                self.delete_secrets(old.as_slice());
                Ok(conn)
            }
            // The commit may have landed: the connection may point at the new record, so
            // leave it to start-up reconciliation.
            Err(e @ StoreError::CommitUncertain(_)) => Err(e.into()),
            Err(e) => {
                // Nothing points at the new record; remove it now (reconcile would at start).
                self.delete_secrets(&[record]);
                Err(e.into())
            }
        }
    }

    /// Revokes a connection: the store records it (and the audit entry) first, then the
    /// sealed values are deleted. Provider-side revocation (RFC 7009) arrives with OAuth.
    pub fn connection_revoke(&self, id: &str, actor: &str) -> Result<Connection, GatewayError> {
        self.connection_revoke_noting(id, actor, None)
    }

    /// As `connection_revoke`, recording how revocation at the provider went.
    pub fn connection_revoke_noting(
        &self,
        id: &str,
        actor: &str,
        provider: Option<&str>,
    ) -> Result<Connection, GatewayError> {
        let (conn, record) = self.store.write(|t| {
            let mut c = t
                .connection(id)?
                .ok_or_else(|| StoreError::NotFound(format!("no connection with id {id}")))?;
            if c.status == ConnectionStatus::Revoked {
                return Err(StoreError::Conflict(format!(
                    "connection {id} is already revoked"
                )));
            }
            let record = c.secret_record.take();
            c.status = ConnectionStatus::Revoked;
            c.status_reason = Some(format!("revoked by {actor}"));
            c.updated = t.now;
            t.put_connection(&c)?;
            let mut event =
                Event::new(actor, "connection.revoke", &c.id, "ok").detail("service", &c.service);
            if let Some(p) = provider {
                event = event.detail("provider_revocation", p);
            }
            t.audit(event)?;
            Ok((c, record))
        })?;
        self.delete_secrets(record.as_slice());
        Ok(conn)
    }

    /// Best effort: a failure leaves an unreferenced record, which `reconcile` removes.
    fn delete_secrets(&self, records: &[String]) {
        for r in records {
            if let Err(e) = self.vault.delete_record(r) {
                tracing::warn!(error = %e, "could not delete a sealed record now; it will be removed at next start");
            }
        }
    }

    /// Resolves what a crash between the two files' commits left behind (module comment).
    pub fn reconcile(&self) -> Result<ReconcileReport, GatewayError> {
        // Expired sign-ins go first, with their sealed verifiers.
        let expired = self.store.write_optional(|t| {
            let (records, removed) = t.purge_expired()?;
            if removed == 0 {
                return Ok(None);
            }
            t.audit(
                Event::new(SYSTEM, "reconcile.expired", "store", "ok")
                    .detail("removed", removed.to_string()),
            )?;
            Ok(Some(records))
        })?;
        self.delete_secrets(&expired.unwrap_or_default());
        // Record by record against the store's reference table, so a million connections
        // never sit in memory at once.
        let r = self.store.read()?;
        let pending_live: BTreeSet<String> = r
            .pending_all()?
            .into_iter()
            .map(|p| p.verifier_record)
            .collect();
        let mut stale_pending = Vec::new();
        let mut orphans = Vec::new();
        let mut stored = 0usize;
        let mut lookup_error = None;
        self.vault.for_each_record(|rec| {
            if rec.starts_with(connect::PENDING_PREFIX) && !pending_live.contains(rec) {
                stale_pending.push(rec.to_owned());
            } else if rec.starts_with(SECRET_PREFIX) {
                stored += 1;
                match r.secret_referenced(rec) {
                    Ok(true) => {}
                    Ok(false) => orphans.push(rec.to_owned()),
                    Err(e) => lookup_error = Some(e),
                }
            }
            Ok(())
        })?;
        if let Some(e) = lookup_error {
            return Err(e.into());
        }
        self.delete_secrets(&stale_pending);
        let mut lost: Vec<Connection> = Vec::new();
        let mut vault_error = None;
        r.for_each_connection(|c| {
            if c.status.holds_secrets() {
                let present = match c.secret_record.as_deref() {
                    Some(rec) => self.vault.has_record(rec).unwrap_or_else(|e| {
                        vault_error = Some(e);
                        true
                    }),
                    None => false,
                };
                if !present {
                    lost.push(c);
                }
            }
            Ok(())
        })?;
        drop(r);
        if let Some(e) = vault_error {
            return Err(e.into());
        }
        // A crash leaves at most one or two orphans. Many unreferenced records mean the store
        // is not the one these secrets belong with (an older backup): refuse to delete them.
        if orphans.len() > MAX_ORPHANS_DELETED_AT_START && orphans.len() * 2 > stored {
            return Err(GatewayError::Invalid(format!(
                "{} of {} sealed records belong to no connection; refusing to delete them (is \
                 scopegate.redb an older copy than secrets.redb?)",
                orphans.len(),
                stored
            )));
        }
        let report = ReconcileReport {
            orphan_secrets_deleted: orphans.len(),
            connections_needing_reauth: lost.len(),
        };
        if !lost.is_empty() {
            self.store.write(|t| {
                for c in &lost {
                    let mut c = c.clone();
                    c.status = ConnectionStatus::NeedsReauth;
                    c.status_reason = Some(
                        "its sealed credentials are missing (interrupted change); reconnect".into(),
                    );
                    c.secret_record = None;
                    c.updated = t.now;
                    t.put_connection(&c)?;
                    t.audit(
                        Event::new(SYSTEM, "reconcile.needs_reauth", &c.id, "ok")
                            .detail("service", &c.service),
                    )?;
                }
                Ok(())
            })?;
        }
        if !orphans.is_empty() {
            // Audit before deleting: if the entry cannot be written, nothing is removed.
            self.store.write(|t| {
                t.audit(
                    Event::new(SYSTEM, "reconcile.orphan_secrets", "vault", "ok")
                        .detail("deleted", orphans.len().to_string()),
                )
                .map(drop)
            })?;
            self.delete_secrets(&orphans);
        }
        Ok(report)
    }

    pub fn audit_event(&self, event: Event) -> Result<(), GatewayError> {
        self.store.write(|t| t.audit(event).map(drop))?;
        Ok(())
    }

    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, GatewayError> {
        Ok(self.store.read()?.audit_after(after, limit)?)
    }

    pub fn audit_verify(&self) -> Result<Verified, GatewayError> {
        Ok(self.store.verify_audit()?)
    }
}

/// API keys go into an HTTP header upstream, so they must be valid header bytes. The error
/// never repeats the key.
fn check_api_key(key: &ApiKey) -> Result<(), GatewayError> {
    let bytes = key.expose_secret();
    if bytes.is_empty() {
        return Err(GatewayError::Invalid(
            "the API key is empty (it is read from stdin)".into(),
        ));
    }
    if bytes.len() > MAX_API_KEY_BYTES {
        return Err(GatewayError::Invalid(format!(
            "the API key is longer than {MAX_API_KEY_BYTES} bytes"
        )));
    }
    if !bytes.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(GatewayError::Invalid(
            "the API key must be printable ASCII without spaces or control characters".into(),
        ));
    }
    Ok(())
}
