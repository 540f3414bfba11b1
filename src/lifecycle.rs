//! Token lifecycle, first part: on-demand refresh. Single-flight per connection (I15): any
//! number of concurrent callers cause one token request, the others wait and use its result.
//! The rotated refresh token is sealed and committed before the new access token is used
//! (I16), and a response without a new refresh token keeps the old one. Only definitive
//! rejections (`invalid_grant`, `invalid_client`, `unauthorized_client`, an error body in a
//! 200) are strikes; three make the connection `needs_reauth` (I17). Transient failures are
//! not strikes. (The proactive scheduler, the in-flight marker and backoff come with the token
//! lifecycle issue.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use crate::config::ServiceKind;
use crate::gateway::connect::{ACCESS_FIELD, REFRESH_FIELD};
use crate::gateway::{Gateway, SECRET_PREFIX, SYSTEM};
use crate::oauth::client::{ClientCredentials, ExchangeError, OAuthClient};
use crate::oauth::token::TokenError;
use crate::store::audit::Event;
use crate::store::{Connection, ConnectionStatus, StoreError};

/// Refresh when less than this is left (the scheduler will use 80% of lifetime).
pub const REFRESH_MARGIN: Duration = Duration::seconds(60);
const MAX_STRIKES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the connection has no refresh token; the user must reconnect")]
    NoRefreshToken,
    #[error("the provider rejected the refresh ({0}); the user may need to reconnect")]
    Rejected(String),
    #[error("the provider could not be reached ({0})")]
    Transient(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Refresher {
    gateway: Arc<Gateway>,
    oauth: Arc<OAuthClient>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each connection was last refreshed because upstream said 401.
    last_forced: Mutex<HashMap<String, std::time::Instant>>,
}

/// An upstream can answer 401 for reasons of its own; at most one such refresh per
/// connection in this window, so an agent cannot make the gateway rotate tokens per call.
const FORCED_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether an error is the provider's final word (a strike) rather than a passing failure.
fn definitive(e: &ExchangeError) -> bool {
    match e {
        // Error codes that say "try later" are not the provider's final word.
        ExchangeError::Token(TokenError::Refused { error, .. }) => !matches!(
            error.as_str(),
            "temporarily_unavailable" | "server_error" | "slow_down"
        ),
        _ => false,
    }
}

impl Refresher {
    pub fn new(gateway: Arc<Gateway>, oauth: Arc<OAuthClient>) -> Self {
        Self {
            gateway,
            oauth,
            flights: Mutex::new(HashMap::new()),
            last_forced: Mutex::new(HashMap::new()),
        }
    }

    /// Due at 80% of the token's lifetime, and never later than a minute before expiry.
    pub fn needs_refresh(c: &Connection, now: OffsetDateTime) -> bool {
        let Some(expires) = c.access_expires else {
            return false;
        };
        let issued = c.last_refresh.or(c.secret_set_at).unwrap_or(now);
        let lifetime: Duration = expires - issued;
        let margin: Duration = std::cmp::min(lifetime / 5_i32, REFRESH_MARGIN);
        expires - now < margin
    }

    /// A refresh because upstream answered 401: rate-limited per connection.
    pub async fn refresh_after_401(
        &self,
        conn_id: &str,
        seen_record: Option<&str>,
    ) -> Result<(), RefreshError> {
        {
            let mut m = self
                .last_forced
                .lock()
                .map_err(|_| RefreshError::Internal("lock".into()))?;
            if m.get(conn_id)
                .is_some_and(|t| t.elapsed() < FORCED_REFRESH_INTERVAL)
            {
                return Err(RefreshError::Transient("refreshed moments ago".into()));
            }
            if m.len() > 100_000 {
                m.retain(|_, t| t.elapsed() < FORCED_REFRESH_INTERVAL);
            }
            m.insert(conn_id.to_owned(), std::time::Instant::now());
        }
        self.refresh(conn_id, seen_record).await
    }

    /// Refreshes the connection unless someone else did while we waited (`seen_record` is
    /// the sealed record the caller found stale).
    pub async fn refresh(
        &self,
        conn_id: &str,
        seen_record: Option<&str>,
    ) -> Result<(), RefreshError> {
        let flight = {
            let mut m = self
                .flights
                .lock()
                .map_err(|_| RefreshError::Internal("lock".into()))?;
            m.entry(conn_id.to_owned()).or_default().clone()
        };
        let _turn = flight.lock().await;
        let g = self.gateway.clone();
        let id = conn_id.to_owned();
        let conn =
            tokio::task::spawn_blocking(move || g.store.read().and_then(|r| r.connection(&id)))
                .await
                .map_err(|e| RefreshError::Internal(e.to_string()))?
                .map_err(|e| RefreshError::Internal(e.to_string()))?
                .ok_or_else(|| RefreshError::Internal("connection gone".into()))?;
        if conn.status != ConnectionStatus::Active {
            return Err(RefreshError::Rejected(
                "the connection is not active".into(),
            ));
        }
        if conn.secret_record.as_deref() != seen_record {
            return Ok(()); // another caller refreshed while we waited
        }
        let svc = self
            .gateway
            .config
            .services
            .get(&conn.service)
            .ok_or_else(|| RefreshError::Internal("service gone".into()))?;
        let ServiceKind::Oauth {
            provider, resource, ..
        } = &svc.kind
        else {
            return Err(RefreshError::NoRefreshToken);
        };
        let p = self
            .gateway
            .config
            .providers
            .get(provider)
            .ok_or_else(|| RefreshError::Internal("provider gone".into()))?;
        let record = conn
            .secret_record
            .clone()
            .ok_or(RefreshError::NoRefreshToken)?;
        let g = self.gateway.clone();
        let r2 = record.clone();
        let old_refresh = tokio::task::spawn_blocking(move || g.vault.get(&r2, REFRESH_FIELD))
            .await
            .map_err(|e| RefreshError::Internal(e.to_string()))?
            .map_err(|e| RefreshError::Internal(e.to_string()))?
            .ok_or(RefreshError::NoRefreshToken)?;
        let rp = self
            .oauth
            .resolve(provider, p)
            .await
            .map_err(|e| RefreshError::Transient(e.to_string()))?;
        let creds = ClientCredentials::load(provider, p)
            .map_err(|e| RefreshError::Internal(e.to_string()))?;
        // No redb transaction is open across this request.
        let result = self
            .oauth
            .refresh(&rp, &creds, old_refresh.expose_secret(), resource.as_ref())
            .await;
        let g = self.gateway.clone();
        match result {
            Ok(tokens) => {
                let tokens = Arc::new(tokens);
                tokio::task::spawn_blocking(move || -> Result<(), RefreshError> {
                    let new_record = format!("{SECRET_PREFIX}{}", uuid::Uuid::new_v4());
                    let refresh_bytes = tokens
                        .refresh_token
                        .as_ref()
                        .map_or(old_refresh.expose_secret(), |r| r.expose_secret());
                    // Seal first (durable), then point the connection at it (durable), and only
                    // then is the new access token used: a rotated refresh token is never lost.
                    g.vault
                        .put_many(&[
                            (
                                &new_record,
                                ACCESS_FIELD,
                                tokens.access_token.expose_secret(),
                            ),
                            (&new_record, REFRESH_FIELD, refresh_bytes),
                        ])
                        .map_err(|e| RefreshError::Internal(e.to_string()))?;
                    let fp = g.vault.fingerprint(tokens.access_token.expose_secret());
                    let written = g.store.write(|t| {
                        let mut c = t
                            .connection(&conn.id)?
                            .ok_or_else(|| StoreError::NotFound("connection gone".into()))?;
                        c.secret_record = Some(new_record.clone());
                        c.secret_fingerprint = Some(fp.clone());
                        c.access_expires = tokens
                            .expires_in
                            .map(|s| t.now + Duration::seconds(s as i64));
                        c.last_refresh = Some(t.now);
                        c.strikes = 0;
                        c.updated = t.now;
                        if let Some(s) = &tokens.scope {
                            c.scopes = s.clone();
                        }
                        t.put_connection(&c)?;
                        t.audit(
                            Event::new(SYSTEM, "oauth.refresh", &c.id, "ok")
                                .detail("service", &c.service)
                                .detail(
                                    "rotated",
                                    if tokens.refresh_token.is_some() {
                                        "yes"
                                    } else {
                                        "no"
                                    },
                                )
                                .detail("token", &fp),
                        )?;
                        Ok(())
                    });
                    match written {
                        Ok(()) => {
                            let _ = g.vault.delete_record(&record);
                            Ok(())
                        }
                        Err(e @ StoreError::CommitUncertain(_)) => {
                            Err(RefreshError::Internal(e.to_string()))
                        }
                        Err(e) => {
                            let _ = g.vault.delete_record(&new_record);
                            Err(RefreshError::Internal(e.to_string()))
                        }
                    }
                })
                .await
                .map_err(|e| RefreshError::Internal(e.to_string()))?
            }
            Err(e) if definitive(&e) => {
                let reason = e.to_string();
                let r2 = reason.clone();
                let cid = conn.id.clone();
                let out = tokio::task::spawn_blocking(move || {
                    g.store.write(|t| {
                        let Some(mut c) = t.connection(&cid)? else {
                            return Ok(0);
                        };
                        c.strikes += 1;
                        if c.strikes >= MAX_STRIKES {
                            c.status = ConnectionStatus::NeedsReauth;
                            c.status_reason =
                                Some(format!("refresh rejected {} times: {r2}", c.strikes));
                        }
                        c.updated = t.now;
                        t.put_connection(&c)?;
                        t.audit(
                            Event::new(SYSTEM, "oauth.refresh", &c.id, "rejected")
                                .detail("strikes", c.strikes.to_string())
                                .detail("reason", &r2),
                        )?;
                        Ok(c.strikes)
                    })
                })
                .await;
                tracing::warn!(connection = %conn.id, strikes = ?out.as_ref().ok().and_then(|r| r.as_ref().ok()), "refresh rejected");
                Err(RefreshError::Rejected(reason))
            }
            Err(e) => Err(RefreshError::Transient(e.to_string())),
        }
    }
}
