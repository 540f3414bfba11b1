//! The token lifecycle: proactive and on-demand refresh.
//!
//! - Single-flight per connection (I15): any number of concurrent callers (scheduler, proxy,
//!   a 401 retry, `connection refresh`) cause one token request; the others wait and use it.
//! - Durable rotation (I16): an in-flight marker is committed before the request; the rotated
//!   refresh token is sealed and committed before the new access token is used; a response
//!   without a new refresh token keeps the old one; no redb transaction is open across network
//!   I/O. Markers and results are group-committed (`committer`).
//! - Failure policy (I17): only definitive rejections (`invalid_grant`, `invalid_client`,
//!   `unauthorized_client`, an error body in a 200) are strikes; three make the connection
//!   `needs_reauth`, its tokens revoked at the provider where possible and removed. Transient
//!   failures (network, timeouts, 5xx, 429) back off exponentially with jitter, honour
//!   `Retry-After`, mark the connection degraded, and are never strikes.
//! - After a crash (or a timeout) mid-refresh the marker is still set: the stored refresh token
//!   is tried once, and `invalid_grant` then means the provider rotated it and the answer was
//!   lost, so the connection goes straight to `needs_reauth` with that reason — never a loop
//!   against reuse detection.

pub mod committer;
pub mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use crate::config::ServiceKind;
use crate::gateway::connect::{ACCESS_FIELD, REFRESH_FIELD};
use crate::gateway::{Gateway, SECRET_PREFIX, SYSTEM};
use crate::oauth::client::{ClientCredentials, ExchangeError, OAuthClient};
use crate::oauth::token::{TokenError, TokenType};
use crate::secret::SecretBytes;
use crate::store::audit::Event;
use crate::store::{Connection, ConnectionStatus};
use committer::{CommitError, Committer, Job};
use schedule::{Clock, Schedule};

/// The sealed expiry (unix seconds) stored beside a refresh's tokens, for adoption.
const EXPIRES_FIELD: &str = "expires_at";
/// How the sealed tokens are bound: `dpop:<thumbprint>` or `bearer` (RFC 9449 §5), so that a
/// refresh answer adopted after a crash is presented exactly as the server issued it.
const BINDING_FIELD: &str = "binding";

/// Refresh on demand when less than this (or a tenth of the lifetime) is left; the scheduler
/// aims at 80% of the lifetime.
pub const REFRESH_MARGIN: Duration = Duration::seconds(60);
const MAX_STRIKES: u32 = 3;
/// Backoff after transient failures: 5 s, 10 s, 20 s … capped at 15 minutes, ±25% jitter.
const BACKOFF_BASE_SECS: f64 = 5.0;
const BACKOFF_MAX_SECS: f64 = 900.0;
/// A provider's Retry-After is honoured up to this.
const RETRY_AFTER_MAX_SECS: u64 = 3600;

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

fn binding_value(dpop_jkt: Option<&str>) -> String {
    match dpop_jkt {
        Some(jkt) => format!("dpop:{jkt}"),
        None => "bearer".into(),
    }
}

fn parse_binding(b: &[u8]) -> Option<String> {
    match std::str::from_utf8(b) {
        Ok("bearer") => None,
        Ok(s) => Some(s.strip_prefix("dpop:").unwrap_or("").to_owned()),
        // Unreadable: bound to nothing we can prove, so never sent as Bearer.
        Err(_) => Some(String::new()),
    }
}

/// What a refresh is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger<'a> {
    /// The caller found this sealed record stale: refresh unless it has been replaced.
    Stale(Option<&'a str>),
    /// The scheduler: refresh if the connection is still due.
    Due,
}

/// Whether an error is the provider's final word (a strike) rather than a passing failure.
fn definitive(e: &ExchangeError) -> bool {
    match e {
        // An allow-list: only codes that say the grant or the client is refused are the
        // provider's final word (RFC 6749 §5.2, and the vendors' equivalents, Slack's in a
        // 200). Anything else — `temporarily_unavailable`, Slack's `ratelimited` or
        // `internal_error`, codes we do not know — is transient, so an incident at the
        // provider never uses up strikes.
        ExchangeError::Token(TokenError::Refused { error, .. }) => matches!(
            error.as_str(),
            "invalid_grant"
                | "invalid_client"
                | "unauthorized_client"
                | "invalid_refresh_token"
                | "token_revoked"
                | "token_expired"
                | "invalid_client_id"
                | "bad_client_secret"
                | "bad_refresh_token"
                | "incorrect_client_credentials"
        ),
        _ => false,
    }
}

/// Whether the request may have been processed by the provider although we have no answer
/// (so a rotation may have happened): network errors and timeouts, not a 5xx/429 answer.
fn outcome_unknown(e: &ExchangeError) -> bool {
    match e {
        ExchangeError::Network(_) => true,
        // An answer we could not read or accept (too large, not JSON, a field missing) may
        // still have been a success that rotated the token.
        ExchangeError::Token(t) => {
            !matches!(t, TokenError::Refused { .. } | TokenError::HttpStatus(_))
        }
        _ => false,
    }
}

/// Exponential backoff with ±25% jitter; the provider's Retry-After wins when longer.
pub fn backoff(failures: u32, retry_after: Option<u64>, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE_SECS * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    let ours = exp.min(BACKOFF_MAX_SECS) * (0.75 + 0.5 * jitter);
    let theirs = retry_after.map_or(0.0, |s| s.min(RETRY_AFTER_MAX_SECS) as f64);
    Duration::seconds_f64(ours.max(theirs))
}

fn random_unit() -> f64 {
    let b = crate::secret::random_array::<8>();
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Counters for /metrics and the benchmark.
#[derive(Default)]
pub struct RefreshStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub ok: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    pub transient: std::sync::atomic::AtomicU64,
}

pub struct Refresher {
    gateway: Arc<Gateway>,
    oauth: Arc<OAuthClient>,
    pub committer: Committer,
    clock: Arc<dyn Clock>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each connection was last refreshed because upstream said 401.
    last_forced: Mutex<HashMap<String, std::time::Instant>>,
    pub stats: RefreshStats,
    /// Where refresh flights asked for on a single-threaded runtime run: a long-lived runtime,
    /// so a flight outlives the caller that started it (a listener thread that is draining).
    flights_on: tokio::runtime::Handle,
}

/// An upstream can answer 401 for reasons of its own; at most one such refresh per
/// connection in this window, so an agent cannot make the gateway rotate tokens per call.
const FORCED_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The connection, if it is still active and still holds the sealed record `from` that a
/// refresh started from: a revocation or a reconnect that landed meanwhile wins, and the
/// refresh's write leaves the connection alone.
fn still_holding(
    t: &crate::store::Txn<'_>,
    id: &str,
    from: &str,
) -> Result<Option<Connection>, crate::store::StoreError> {
    Ok(t.connection(id)?.filter(|c| {
        c.status == ConnectionStatus::Active && c.secret_record.as_deref() == Some(from)
    }))
}

fn internal(e: impl std::fmt::Display) -> RefreshError {
    RefreshError::Internal(e.to_string())
}

impl Refresher {
    /// Needs a Tokio runtime (it starts the group-commit task).
    pub fn new(gateway: Arc<Gateway>, oauth: Arc<OAuthClient>, clock: Arc<dyn Clock>) -> Self {
        Self {
            committer: Committer::start(gateway.clone()),
            gateway,
            oauth,
            clock,
            flights: Mutex::new(HashMap::new()),
            last_forced: Mutex::new(HashMap::new()),
            stats: RefreshStats::default(),
            flights_on: tokio::runtime::Handle::current(),
        }
    }

    /// Runs refresh flights on `runtime` instead of the one `new` was called on.
    pub fn with_flights_on(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.flights_on = runtime;
        self
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The DPoP nonces servers gave us; the proxy keeps resource servers' here too.
    pub fn dpop_nonces(&self) -> Arc<crate::oauth::dpop::Nonces> {
        self.oauth.nonces.clone()
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// On demand (the proxy): due when less than a fifth of the lifetime or a minute is left.
    pub fn needs_refresh(c: &Connection, now: OffsetDateTime) -> bool {
        let Some(expires) = c.access_expires else {
            return false;
        };
        let issued = c.last_refresh.or(c.secret_set_at).unwrap_or(now);
        let lifetime: Duration = expires - issued;
        // The last tenth of the lifetime: later than the scheduler's latest due time (85%), so
        // under a steady load the scheduler refreshes first and no agent call waits for it;
        // an agent only refreshes when the scheduler is behind or off.
        let margin: Duration = std::cmp::min(lifetime / 10_i32, REFRESH_MARGIN);
        expires - now < margin
    }

    /// A refresh because upstream answered 401: rate-limited per connection.
    pub async fn refresh_after_401(
        self: &Arc<Self>,
        conn_id: &str,
        seen_record: Option<&str>,
    ) -> Result<(), RefreshError> {
        {
            let mut m = self.last_forced.lock().map_err(internal)?;
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
        self.run(conn_id, Trigger::Stale(seen_record), "after_401")
            .await
    }

    /// Refreshes the connection unless someone else did while we waited (`seen_record` is
    /// the sealed record the caller found stale).
    pub async fn refresh(
        self: &Arc<Self>,
        conn_id: &str,
        seen_record: Option<&str>,
    ) -> Result<(), RefreshError> {
        self.run(conn_id, Trigger::Stale(seen_record), "on_demand")
            .await
    }

    /// As `refresh`, asked for by an admin (`connection refresh`, the console).
    pub async fn refresh_by_admin(
        self: &Arc<Self>,
        conn_id: &str,
        seen_record: Option<&str>,
    ) -> Result<(), RefreshError> {
        self.run(conn_id, Trigger::Stale(seen_record), "admin")
            .await
    }

    /// The scheduler's refresh: only if the connection is still due.
    pub async fn refresh_due(self: &Arc<Self>, conn_id: &str) -> Result<(), RefreshError> {
        self.run(conn_id, Trigger::Due, "scheduled").await
    }

    /// `why` names the trigger in the audit entry. The refresh runs in its own task: an agent
    /// that hangs up mid-refresh must not drop the provider's answer (a rotated refresh token)
    /// on the floor.
    async fn run(
        self: &Arc<Self>,
        conn_id: &str,
        trigger: Trigger<'_>,
        why: &'static str,
    ) -> Result<(), RefreshError> {
        let flight = {
            let mut m = self.flights.lock().map_err(internal)?;
            m.entry(conn_id.to_owned()).or_default().clone()
        };
        let (me, id) = (self.clone(), conn_id.to_owned());
        let seen: Option<Option<String>> = match trigger {
            Trigger::Stale(r) => Some(r.map(str::to_owned)),
            Trigger::Due => None,
        };
        // A listener thread's single-threaded loop stops when it drains; a flight started
        // there runs on `flights_on`. Elsewhere (the scheduler on the lifecycle runtime) it
        // stays where it was asked for, at that runtime's priority.
        let on = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread => h,
            _ => self.flights_on.clone(),
        };
        let task = on.spawn(async move {
            let turn = flight.lock().await;
            let trigger = match &seen {
                Some(r) => Trigger::Stale(r.as_deref()),
                None => Trigger::Due,
            };
            let result = me.run_alone(&id, trigger, why).await;
            drop(turn);
            // The map keeps only flights someone is in or waiting for (the map's reference and
            // this task's are the last two); done here, so a caller that hung up leaves none.
            if let Ok(mut m) = me.flights.lock()
                && m.get(&id).is_some_and(|f| Arc::strong_count(f) <= 2)
            {
                m.remove(&id);
            }
            result
        });
        task.await.unwrap_or_else(|e| Err(internal(e)))
    }

    async fn run_alone(
        &self,
        conn_id: &str,
        trigger: Trigger<'_>,
        why: &'static str,
    ) -> Result<(), RefreshError> {
        let g = self.gateway.clone();
        let id = conn_id.to_owned();
        let conn = tokio::task::spawn_blocking(move || g.store.read()?.connection(&id))
            .await
            .map_err(internal)?
            .map_err(internal)?
            .ok_or_else(|| RefreshError::Internal("connection gone".into()))?;
        if conn.status != ConnectionStatus::Active {
            return Err(RefreshError::Rejected(
                "the connection is not active".into(),
            ));
        }
        let now = self.clock.now();
        match trigger {
            Trigger::Stale(seen) if conn.secret_record.as_deref() != seen => return Ok(()),
            // Refreshed by someone else since it was scheduled: the earliest it could be due
            // again is in the future.
            Trigger::Due
                if conn.refresh.in_flight_since.is_none()
                    && schedule::due_at(&conn, 0.0).is_none_or(|d| d > now) =>
            {
                return Ok(());
            }
            _ => {}
        }
        if let Some(at) = conn.refresh.retry_at
            && at > now
        {
            // Bounded retries: callers do not hammer a failing provider during its backoff.
            return match trigger {
                Trigger::Due => Ok(()),
                Trigger::Stale(_) => Err(RefreshError::Transient(format!(
                    "backing off after {} failures",
                    conn.refresh.transient_failures
                ))),
            };
        }
        let svc = self
            .gateway
            .config
            .services
            .get(&conn.service)
            .ok_or_else(|| internal("service gone"))?;
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
            .ok_or_else(|| internal("provider gone"))?;
        let record = conn
            .secret_record
            .clone()
            .ok_or(RefreshError::NoRefreshToken)?;
        let g = self.gateway.clone();
        let r2 = record.clone();
        let (old_refresh, dpop_pkcs8) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::vault::VaultError>((
                g.vault.get(&r2, REFRESH_FIELD)?,
                g.vault.get(&r2, crate::oauth::dpop::KEY_FIELD)?,
            ))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let old_refresh = old_refresh.ok_or(RefreshError::NoRefreshToken)?;
        let rp = self
            .oauth
            .resolve(provider, p)
            .await
            .map_err(|e| RefreshError::Transient(e.to_string()))?;
        let creds = ClientCredentials::load(provider, p).map_err(internal)?;
        // I16: the marker is durable before the request leaves. Already set means an earlier
        // attempt's outcome was lost (crash or timeout): this is the one retry.
        let resumed = conn.refresh.in_flight_since.is_some();
        if resumed
            && let Some(pending) = conn.refresh.pending_record.clone()
            && let Some(done) = self.adopt(&conn, &record, &pending, why).await?
        {
            return done;
        }
        // RFC 9449 §5: the refresh is proven with the key the tokens are bound to (for a
        // public client the refresh token itself is bound to it), and the new tokens stay
        // bound to the same key. Parsed after the adoption above, which needs no key.
        let dpop_key = dpop_pkcs8
            .as_ref()
            .map(|k| crate::oauth::dpop::DpopKey::from_pkcs8(k.expose_secret()))
            .transpose()
            .map_err(internal)?;
        // A resumed attempt seals under the name its marker already carries.
        let new_record = conn
            .refresh
            .pending_record
            .clone()
            .filter(|_| resumed)
            .unwrap_or_else(|| format!("{SECRET_PREFIX}{}", uuid::Uuid::new_v4()));
        if !resumed {
            let id = conn.id.clone();
            let from = record.clone();
            let pending = new_record.clone();
            let at = now;
            self.committer
                .commit(Job {
                    seal: Vec::new(),
                    apply: Box::new(move |t| {
                        if let Some(mut c) = still_holding(t, &id, &from)? {
                            c.refresh.in_flight_since = Some(at);
                            c.refresh.pending_record = Some(pending);
                            t.put_connection(&c)?;
                        }
                        Ok(())
                    }),
                })
                .await
                .map_err(internal)?;
        }
        self.stats
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // No redb transaction is open across this request.
        let result = self
            .oauth
            .refresh(
                &rp,
                &creds,
                old_refresh.expose_secret(),
                resource.as_ref(),
                dpop_key.as_ref(),
            )
            .await;
        let received = self.clock.now();
        match result {
            Ok(tokens) => {
                let fp = self
                    .gateway
                    .vault
                    .fingerprint(tokens.access_token.expose_secret());
                let rotated = tokens.refresh_token.is_some();
                let refresh_bytes = SecretBytes::new(
                    tokens
                        .refresh_token
                        .as_ref()
                        .map_or(old_refresh.expose_secret(), |r| r.expose_secret())
                        .to_vec(),
                );
                let access = SecretBytes::new(tokens.access_token.expose_secret().to_vec());
                let (id, nr, from) = (conn.id.clone(), new_record.clone(), record.clone());
                let (expires_in, scope) = (tokens.expires_in, tokens.scope.clone());
                let dpop_jkt = match (tokens.token_type == TokenType::DPoP, &dpop_key) {
                    (true, Some(k)) => Some(k.thumbprint().to_owned()),
                    // A DPoP-bound answer to a request without a proof breaks RFC 9449. The
                    // tokens are kept (the refresh token may have rotated) but marked bound to
                    // no key we hold, so the access token is never sent as Bearer.
                    (true, None) => Some(String::new()),
                    (false, _) => None,
                };
                let mut seal = vec![
                    (new_record.clone(), ACCESS_FIELD, access),
                    (new_record.clone(), REFRESH_FIELD, refresh_bytes),
                    (
                        new_record.clone(),
                        EXPIRES_FIELD,
                        SecretBytes::new(
                            expires_in
                                .map(|s| (received + Duration::seconds(s as i64)).unix_timestamp())
                                .unwrap_or(0)
                                .to_string()
                                .into_bytes(),
                        ),
                    ),
                ];
                seal.push((
                    new_record.clone(),
                    BINDING_FIELD,
                    SecretBytes::new(binding_value(dpop_jkt.as_deref()).into_bytes()),
                ));
                // The key travels with the tokens bound to it.
                if let Some(k) = &dpop_pkcs8 {
                    seal.push((
                        new_record.clone(),
                        crate::oauth::dpop::KEY_FIELD,
                        SecretBytes::new(k.expose_secret().to_vec()),
                    ));
                }
                // A revocation (admin, webhook) that landed during the request wins: the new
                // tokens are not attached to a connection that is no longer active.
                let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let applied2 = applied.clone();
                let committed = self
                    .committer
                    .commit(Job {
                        // Seal first (durable), then point the connection at it (durable), and
                        // only then is the new access token used: a rotated refresh token is
                        // never lost.
                        seal,
                        apply: Box::new(move |t| {
                            let Some(mut c) = still_holding(t, &id, &from)? else {
                                return Ok(());
                            };
                            applied2.store(true, std::sync::atomic::Ordering::SeqCst);
                            c.secret_record = Some(nr);
                            c.secret_fingerprint = Some(fp.clone());
                            c.access_expires =
                                expires_in.map(|s| received + Duration::seconds(s as i64));
                            c.last_refresh = Some(received);
                            c.dpop_jkt = dpop_jkt;
                            c.strikes = 0;
                            c.refresh = Default::default();
                            c.updated = t.now;
                            if let Some(s) = scope {
                                c.scopes = s;
                            }
                            t.put_connection(&c)?;
                            t.audit(
                                Event::new(SYSTEM, "oauth.refresh", &c.id, "ok")
                                    .detail("service", &c.service)
                                    .detail("rotated", if rotated { "yes" } else { "no" })
                                    .detail("trigger", why)
                                    .detail("token", &fp),
                            )
                            .map(drop)
                        }),
                    })
                    .await;
                match committed {
                    Ok(()) if !applied.load(std::sync::atomic::Ordering::SeqCst) => {
                        self.delete_record(new_record).await;
                        Err(RefreshError::Rejected(
                            "the connection was revoked during the refresh".into(),
                        ))
                    }
                    Ok(()) => {
                        self.stats
                            .ok
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.delete_record(record).await;
                        Ok(())
                    }
                    Err(CommitError::Uncertain(e)) => Err(RefreshError::Internal(e)),
                    // The provider has rotated already: keep what was sealed (the marker names
                    // it), so the next attempt adopts it rather than replaying the old token.
                    Err(CommitError::Failed(e)) => Err(RefreshError::Internal(e)),
                }
            }
            Err(e) if definitive(&e) => {
                self.stats
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reason = e.to_string();
                // The one retry after a lost outcome was refused: the provider rotated the
                // token we hold (reuse detection may have ended the grant). Trying again could
                // only loop, so the user reconnects.
                let strike_spacing = Duration::seconds(
                    i64::try_from(self.gateway.config.limits.strike_interval_secs).unwrap_or(300),
                );
                let lost_rotation = resumed
                    && matches!(&e, ExchangeError::Token(TokenError::Refused { error, .. }) if error == "invalid_grant");
                let (id, r2, from) = (conn.id.clone(), reason.clone(), record.clone());
                let ended = Arc::new(Mutex::new(false));
                let ended2 = ended.clone();
                let committed = self
                    .committer
                    .commit(Job {
                        seal: Vec::new(),
                        apply: Box::new(move |t| {
                            let Some(mut c) = still_holding(t, &id, &from)? else {
                                return Ok(());
                            };
                            c.strikes = if lost_rotation {
                                MAX_STRIKES
                            } else {
                                c.strikes + 1
                            };
                            // Strikes are spaced out too: a passing misconfiguration (a wrong
                            // client secret answers invalid_client) must not use up all three
                            // in a moment.
                            c.refresh = crate::store::RefreshState {
                                retry_at: Some(received + strike_spacing * i32::try_from(c.strikes).unwrap_or(3)),
                                ..Default::default()
                            };
                            c.updated = t.now;
                            let mut ev = Event::new(SYSTEM, "oauth.refresh", &c.id, "rejected")
                                .detail("service", &c.service)
                                .detail("strikes", c.strikes.to_string())
                                .detail("trigger", why)
                                .detail("reason", &r2);
                            if c.strikes >= MAX_STRIKES {
                                c.status = ConnectionStatus::NeedsReauth;
                                c.status_reason = Some(if lost_rotation {
                                    format!("an interrupted refresh left a refresh token the provider no longer accepts ({r2}); reconnect")
                                } else {
                                    format!("refresh rejected {} times ({r2}); reconnect", c.strikes)
                                });
                                c.secret_record = None;
                                ev = ev.detail("status", "needs_reauth");
                                if let Ok(mut e) = ended2.lock() {
                                    *e = true;
                                }
                            }
                            t.put_connection(&c)?;
                            t.audit(ev).map(drop)
                        }),
                    })
                    .await;
                let ended = ended.lock().map(|e| *e).unwrap_or(false);
                tracing::warn!(connection = %conn.id, ended, "refresh rejected");
                if committed.is_ok() && ended {
                    // I17: tokens revoked at the provider where possible (RFC 7009), then
                    // removed here; the agent's next call gets the reconnect answer.
                    let g = self.gateway.clone();
                    let r2 = record.clone();
                    let access =
                        tokio::task::spawn_blocking(move || g.vault.get(&r2, ACCESS_FIELD))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        self.oauth.revoke_refresh_then_access(
                            &rp,
                            &creds,
                            Some(old_refresh.expose_secret()),
                            access.as_ref().map(|a| a.expose_secret()),
                        ),
                    )
                    .await;
                    self.delete_record(record).await;
                }
                Err(RefreshError::Rejected(reason))
            }
            Err(e) => {
                self.stats
                    .transient
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reason = e.to_string();
                let retry_after = match &e {
                    ExchangeError::Unavailable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                // A resumed attempt keeps the marker whatever happens short of success: the
                // earlier outcome is still unknown.
                let keep_marker = resumed || outcome_unknown(&e);
                let failures = conn.refresh.transient_failures + 1;
                let wait = backoff(failures, retry_after, random_unit());
                let (id, r2, from) = (conn.id.clone(), reason.clone(), record.clone());
                let _ = self
                    .committer
                    .commit(Job {
                        seal: Vec::new(),
                        apply: Box::new(move |t| {
                            let Some(mut c) = still_holding(t, &id, &from)? else {
                                return Ok(());
                            };
                            if !keep_marker {
                                c.refresh.in_flight_since = None;
                                c.refresh.pending_record = None;
                            }
                            c.refresh.transient_failures = failures;
                            c.refresh.degraded = Some(r2.clone());
                            c.refresh.retry_at = Some(received + wait);
                            c.updated = t.now;
                            t.put_connection(&c)?;
                            // Not a strike: a provider outage must not revoke anyone (I17).
                            t.audit(
                                Event::new(SYSTEM, "oauth.refresh", &c.id, "transient")
                                    .detail("service", &c.service)
                                    .detail("failures", failures.to_string())
                                    .detail("trigger", why)
                                    .detail("retry_in_secs", wait.whole_seconds().to_string())
                                    .detail("reason", &r2),
                            )
                            .map(drop)
                        }),
                    })
                    .await;
                Err(RefreshError::Transient(reason))
            }
        }
    }

    /// A lost outcome whose answer did reach the vault (a crash or a failed commit between
    /// the vault's commit and the store's): point the connection at the sealed tokens. `None`
    /// when nothing was sealed there (then the one retry with the stored token follows).
    async fn adopt(
        &self,
        conn: &Connection,
        from: &str,
        pending: &str,
        why: &'static str,
    ) -> Result<Option<Result<(), RefreshError>>, RefreshError> {
        let g = self.gateway.clone();
        let p2 = pending.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let access = g.vault.get(&p2, ACCESS_FIELD)?;
            let refresh = g.vault.get(&p2, REFRESH_FIELD)?;
            let expires = g.vault.get(&p2, EXPIRES_FIELD)?;
            let binding = g.vault.get(&p2, BINDING_FIELD)?;
            let key = g.vault.get(&p2, crate::oauth::dpop::KEY_FIELD)?;
            Ok::<_, crate::vault::VaultError>((access, refresh, expires, binding, key))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let (Some(access), Some(_), expires, binding, key) = found else {
            return Ok(None);
        };
        // Presented exactly as issued; with no record of it (sealed by an older version),
        // a record holding a key is taken as bound to it, never as Bearer.
        let dpop_jkt = match binding.as_ref().map(|b| parse_binding(b.expose_secret())) {
            Some(jkt) => jkt,
            None => key
                .as_ref()
                .and_then(|k| crate::oauth::dpop::thumbprint_of(k.expose_secret()).ok())
                .or_else(|| key.as_ref().map(|_| String::new())),
        };
        let fp = self.gateway.vault.fingerprint(access.expose_secret());
        let expires = expires
            .and_then(|e| {
                std::str::from_utf8(e.expose_secret())
                    .ok()?
                    .parse::<i64>()
                    .ok()
            })
            .filter(|e| *e > 0)
            .and_then(|e| OffsetDateTime::from_unix_timestamp(e).ok());
        let (id, from2, pending2) = (conn.id.clone(), from.to_owned(), pending.to_owned());
        let since = conn.refresh.in_flight_since;
        let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let applied2 = applied.clone();
        self.committer
            .commit(Job {
                seal: Vec::new(),
                apply: Box::new(move |t| {
                    let Some(mut c) = still_holding(t, &id, &from2)? else {
                        return Ok(());
                    };
                    applied2.store(true, std::sync::atomic::Ordering::SeqCst);
                    c.secret_record = Some(pending2);
                    c.secret_fingerprint = Some(fp.clone());
                    c.access_expires = expires;
                    c.dpop_jkt = dpop_jkt;
                    c.last_refresh = since;
                    c.strikes = 0;
                    c.refresh = Default::default();
                    c.updated = t.now;
                    t.put_connection(&c)?;
                    t.audit(
                        Event::new(SYSTEM, "oauth.refresh", &c.id, "ok")
                            .detail("service", &c.service)
                            .detail("recovered", "sealed answer of an interrupted refresh")
                            .detail("trigger", why)
                            .detail("token", &fp),
                    )
                    .map(drop)
                }),
            })
            .await
            .map_err(internal)?;
        if applied.load(std::sync::atomic::Ordering::SeqCst) {
            self.delete_record(from.to_owned()).await;
            Ok(Some(Ok(())))
        } else {
            Ok(None)
        }
    }

    /// The store no longer points at `record`: removed with the next vault commit.
    async fn delete_record(&self, record: String) {
        self.committer.retire(record).await;
    }
}

/// The proactive side: every OAuth connection ordered by its refresh time, refreshed ahead of
/// use with a cap per provider and overall, fed by the store's connection writes.
pub struct Scheduler {
    refresher: Arc<Refresher>,
    schedule: Mutex<Schedule>,
    provider_of: Mutex<HashMap<Arc<str>, Arc<str>>>,
    limits: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Semaphore>>>,
    per_provider: usize,
    overall: Arc<tokio::sync::Semaphore>,
    wake: tokio::sync::Notify,
}

/// Where a stored connection belongs in the refresh schedule: its provider and when it is
/// due, or nothing (API keys, connections with nothing to refresh).
fn placement<'c>(
    config: &'c crate::config::Config,
    now: OffsetDateTime,
    c: &Connection,
    at_start: bool,
) -> Option<(&'c str, OffsetDateTime)> {
    let provider = match &config.services.get(&c.service)?.kind {
        ServiceKind::Oauth { provider, .. } => provider.as_str(),
        ServiceKind::ApiKey { .. } => return None,
    };
    // A marker with no backoff is a refresh in progress (its result reschedules it) —
    // except at start, where it is a lost outcome to resolve now.
    let due = if c.refresh.in_flight_since.is_some()
        && c.refresh.retry_at.is_none()
        && c.status == ConnectionStatus::Active
    {
        at_start.then_some(now)
    } else {
        schedule::due_at(c, random_unit())
    }?;
    Some((provider, due))
}

/// The start-up placements of every stored connection that has one, read before the
/// scheduler exists (`Scheduler::preload`).
pub struct Preloaded(Vec<(String, String, OffsetDateTime)>);

impl Scheduler {
    /// Reads where every stored connection belongs in the schedule, before the gateway is
    /// shared: `serve` does this right after reconciliation, then drops the store's page
    /// cache, so the scan of a million connections does not leave the cache full at rest.
    /// Nothing may write connections between this and `start_with` (at start-up nothing does:
    /// the listeners and the admin socket are not serving yet).
    pub fn preload(
        gateway: &Gateway,
        now: OffsetDateTime,
    ) -> Result<Preloaded, crate::store::StoreError> {
        let mut out = Vec::new();
        gateway.store.read()?.for_each_connection(|c| {
            if let Some((provider, due)) = placement(&gateway.config, now, &c, true) {
                out.push((c.id, provider.to_owned(), due));
            }
            Ok(())
        })?;
        Ok(Preloaded(out))
    }

    /// Loads every connection (streaming), spreads what is overdue over `spread`, subscribes
    /// to connection writes and starts the loop.
    pub async fn start(
        refresher: Arc<Refresher>,
        per_provider: usize,
        spread: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<Self>, RefreshError> {
        Self::start_with(refresher, per_provider, spread, shutdown, None).await
    }

    /// `start`, with the placements `preload` read instead of a scan of its own.
    pub async fn start_with(
        refresher: Arc<Refresher>,
        per_provider: usize,
        spread: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
        preloaded: Option<Preloaded>,
    ) -> Result<Arc<Self>, RefreshError> {
        let s = Arc::new(Self {
            refresher,
            schedule: Mutex::new(Schedule::default()),
            provider_of: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            per_provider: per_provider.max(1),
            overall: Arc::new(tokio::sync::Semaphore::new((per_provider * 8).max(1))),
            wake: tokio::sync::Notify::new(),
        });
        let weak = Arc::downgrade(&s);
        s.refresher
            .gateway
            .store
            .observe_connections(Box::new(move |conns| {
                if let Some(s) = weak.upgrade() {
                    for c in conns {
                        s.track(c, false);
                    }
                    s.wake.notify_one();
                }
            }));
        match preloaded {
            Some(Preloaded(placements)) => {
                for (id, provider, due) in &placements {
                    s.place(id, Some((provider, *due)));
                }
            }
            None => {
                let s2 = s.clone();
                tokio::task::spawn_blocking(move || {
                    s2.refresher.gateway.store.read()?.for_each_connection(|c| {
                        s2.track(&c, true);
                        Ok(())
                    })
                })
                .await
                .map_err(internal)?
                .map_err(internal)?;
            }
        }
        let now = s.refresher.clock.now();
        if let Ok(mut sched) = s.schedule.lock() {
            sched.spread_overdue(now, spread, random_unit);
        }
        tokio::spawn(s.clone().run(shutdown));
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.schedule.lock().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `c` where it belongs in the schedule (or takes it out).
    fn track(&self, c: &Connection, at_start: bool) {
        let now = self.refresher.clock.now();
        let placed = placement(&self.refresher.gateway.config, now, c, at_start);
        self.place(&c.id, placed);
    }

    fn place(&self, id: &str, placed: Option<(&str, OffsetDateTime)>) {
        let Ok(mut sched) = self.schedule.lock() else {
            return;
        };
        match placed {
            Some((provider, due)) => {
                sched.upsert(id, due);
                if let Ok(mut m) = self.provider_of.lock() {
                    m.insert(Arc::from(id), Arc::from(provider));
                }
            }
            None => {
                sched.remove(id);
                if let Ok(mut m) = self.provider_of.lock() {
                    m.remove(id);
                }
            }
        }
    }

    /// After a scheduled attempt: put the connection back where it now belongs. Paths that
    /// wrote nothing (the provider's metadata unreachable, a vault error) would otherwise drop
    /// it from the schedule for good; one still due is retried in a minute, not at once.
    async fn retrack(self: &Arc<Self>, id: &str) {
        let g = self.refresher.gateway.clone();
        let id2 = id.to_owned();
        let conn = tokio::task::spawn_blocking(move || g.store.read()?.connection(&id2)).await;
        let now = self.refresher.clock.now();
        match conn {
            Ok(Ok(Some(c))) => {
                let still_due = c.refresh.in_flight_since.is_none()
                    && schedule::due_at(&c, 0.0).is_some_and(|d| d <= now);
                self.track(&c, false);
                if still_due && let Ok(mut s) = self.schedule.lock() {
                    s.upsert(id, now + Duration::minutes(1));
                }
            }
            Ok(Ok(None)) => self.track_removed(id),
            _ => {
                if let Ok(mut s) = self.schedule.lock() {
                    s.upsert(id, now + Duration::minutes(1));
                }
            }
        }
    }

    fn track_removed(&self, id: &str) {
        if let Ok(mut s) = self.schedule.lock() {
            s.remove(id);
        }
        if let Ok(mut m) = self.provider_of.lock() {
            m.remove(id);
        }
    }

    fn limit_for(&self, provider: &Arc<str>) -> Arc<tokio::sync::Semaphore> {
        let mut m = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(provider.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_provider)))
            .clone()
    }

    async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let clock = self.refresher.clock.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Bounded work in flight: a permit before each pop, so a storm of due
            // connections waits in the schedule, not as a heap of tasks.
            loop {
                let Ok(permit) = self.overall.clone().acquire_owned().await else {
                    return;
                };
                let now = clock.now();
                let next = self
                    .schedule
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop_due(now, 1).pop());
                let Some(id) = next else { break };
                let provider = self
                    .provider_of
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&id).cloned());
                let Some(provider) = provider else { continue };
                let limit = self.limit_for(&provider);
                let (r, me) = (self.refresher.clone(), self.clone());
                tokio::spawn(async move {
                    let _overall = permit;
                    let Ok(_p) = limit.acquire_owned().await else {
                        return;
                    };
                    if let Err(e) = r.refresh_due(&id).await {
                        tracing::debug!(connection = %id, error = %e, "scheduled refresh failed");
                    }
                    // The next connection may go while this one is put back in the schedule.
                    drop(_p);
                    drop(_overall);
                    me.retrack(&id).await;
                });
            }
            let next = self.schedule.lock().ok().and_then(|s| s.next_due());
            let until = next.unwrap_or_else(|| clock.now() + Duration::hours(1));
            tokio::select! {
                () = clock.sleep_until(until) => {}
                () = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> ExchangeError {
        ExchangeError::Token(TokenError::Refused {
            error: code.into(),
            description: None,
        })
    }

    /// Only the provider's final word is a strike; an incident at the provider (or a code we
    /// do not know) never is, and an answer we could not read leaves the outcome unknown.
    #[test]
    fn strikes_are_an_allow_list_and_unreadable_answers_keep_the_marker() {
        for code in [
            "invalid_grant",
            "invalid_client",
            "unauthorized_client",
            "invalid_refresh_token",
        ] {
            assert!(definitive(&refused(code)), "{code}");
        }
        for code in [
            "temporarily_unavailable",
            "server_error",
            "ratelimited",
            "internal_error",
            "something_new",
            // RFC 9449: a nonce challenge left after its one retry, or a proof the server
            // did not accept, says nothing about the grant (I17: never a strike).
            "use_dpop_nonce",
            "invalid_dpop_proof",
        ] {
            assert!(!definitive(&refused(code)), "{code}");
            assert!(!outcome_unknown(&refused(code)), "{code}");
        }
        let unavailable = ExchangeError::Unavailable {
            status: 503,
            retry_after: Some(30),
        };
        assert!(!definitive(&unavailable) && !outcome_unknown(&unavailable));
        assert!(outcome_unknown(&ExchangeError::Network("reset".into())));
        assert!(outcome_unknown(&ExchangeError::Token(TokenError::NotJson)));
        assert!(outcome_unknown(&ExchangeError::Token(
            TokenError::MissingAccessToken
        )));
        assert!(!outcome_unknown(&refused("invalid_grant")));
    }

    #[test]
    fn the_scheduler_comes_before_an_agent_would_refresh() {
        let issued = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for lifetime in [4, 10, 30, 60, 300, 3600, 86_400] {
            let c = schedule::tests::oauth(issued, lifetime);
            // The latest the scheduler can be due (jitter at its maximum).
            let due = schedule::due_at(&c, 1.0).unwrap();
            assert!(
                !Refresher::needs_refresh(&c, due),
                "{lifetime} s tokens: an agent call at the scheduler's due time refreshes itself"
            );
            assert!(Refresher::needs_refresh(
                &c,
                issued + Duration::seconds(lifetime) - Duration::milliseconds(1)
            ));
        }
    }

    #[test]
    fn backoff_grows_with_jitter_caps_and_honours_retry_after() {
        let secs = |n, ra, j| backoff(n, ra, j).whole_seconds();
        assert_eq!(secs(1, None, 0.5), 5);
        assert_eq!(secs(2, None, 0.5), 10);
        assert_eq!(secs(3, None, 0.5), 20);
        assert!((3..=6).contains(&secs(1, None, 0.0)) && (3..=6).contains(&secs(1, None, 0.999)));
        assert_eq!(secs(30, None, 0.5), 900, "capped at 15 minutes");
        assert_eq!(secs(1, Some(120), 0.5), 120, "Retry-After wins when longer");
        assert_eq!(secs(1, Some(999_999), 0.5), 3600, "but not beyond an hour");
    }
}
