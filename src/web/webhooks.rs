//! `/webhooks/*`: HTTP glue for provider revocation signals (I18). Each handler verifies the
//! sender's signature over the raw body before it parses anything, then hands the event to
//! `gateway::provider_events`. A request that does not verify changes nothing: it is refused
//! and logged (without the signature or any secret), never audited, so forged traffic cannot
//! grow the audit log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::config::{Preset, ProviderEndpoints};
use crate::gateway::Gateway;
use crate::gateway::provider_events::{Affected, ProviderRevocation};
use crate::secret::ClientSecret;
use crate::webhooks::github::{self, GithubEvent};
use crate::webhooks::jwks::{JwksCache, JwksError};
use crate::webhooks::risc::{self, EventKind, Jws, SetError};
use crate::webhooks::slack::{self, SlackEvent, SlackRefusal};
use crate::webhooks::{MAX_BODY_BYTES, ReplayGuard};

const REPLAY_TTL: Duration = Duration::from_secs(risc::MAX_AGE_SECS as u64);
const REPLAY_CAP: usize = 50_000;

pub struct Webhooks {
    gateway: Arc<Gateway>,
    /// Accepted GitHub deliveries, Slack signatures and SET `jti`s. The longest window any of
    /// them needs is a SET's seven days; at the cap the oldest entries go.
    seen: Mutex<ReplayGuard>,
    jwks: JwksCache,
}

pub fn routes(gateway: Arc<Gateway>) -> Router {
    routes_with(gateway, crate::webhooks::jwks::MIN_REFETCH)
}

/// As `routes`, with the least time between two JWKS fetches of one provider.
pub fn routes_with(gateway: Arc<Gateway>, jwks_min_refetch: Duration) -> Router {
    let w = Arc::new(Webhooks {
        gateway,
        seen: Mutex::new(ReplayGuard::new(REPLAY_TTL, REPLAY_CAP)),
        jwks: JwksCache::new(jwks_min_refetch),
    });
    Router::new()
        .route("/webhooks/github", post(github_hook))
        .route("/webhooks/slack", post(slack_hook))
        .route("/webhooks/risc/{provider}", post(risc_hook))
        .with_state(w)
}

impl Webhooks {
    /// The webhook secrets of the configured providers that `preset` selects, read now (so a
    /// rotated secret file takes effect without a restart). A secret that cannot be read is
    /// logged by name and skipped.
    fn secrets(&self, preset: impl Fn(&Preset) -> bool) -> Vec<(String, ClientSecret)> {
        let mut out = Vec::new();
        for (name, p) in &self.gateway.config.providers {
            let ProviderEndpoints::Preset(kind) = &p.endpoints else {
                continue;
            };
            if !preset(kind) {
                continue;
            }
            match p.webhook_secret.read(name) {
                Ok(Some(s)) if !s.is_empty() => out.push((name.clone(), s)),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "webhook secret unavailable"),
            }
        }
        out
    }

    fn first_sight(&self, key: &[u8]) -> bool {
        self.seen
            .lock()
            .map(|mut g| g.first_sight(key, Instant::now()))
            .unwrap_or(false)
    }

    fn forget(&self, key: &[u8]) {
        if let Ok(mut g) = self.seen.lock() {
            g.forget(key);
        }
    }

    async fn revoke(&self, ev: ProviderRevocation) -> Result<(), ()> {
        let g = self.gateway.clone();
        match tokio::task::spawn_blocking(move || g.apply_revocation(&ev)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "provider revocation could not be applied");
                Err(())
            }
            Err(_) => Err(()),
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

async fn github_hook(State(w): State<Arc<Webhooks>>, h: HeaderMap, body: Bytes) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    }
    let secrets = w.secrets(|p| matches!(p, Preset::Github | Preset::GithubApp));
    if secrets.is_empty() {
        return text(StatusCode::NOT_FOUND, "no GitHub webhook is configured\n");
    }
    let sig = header(&h, "x-hub-signature-256");
    let verified: Vec<String> = secrets
        .iter()
        .filter(|(_, s)| github::verify(s.expose_secret(), &body, sig).is_ok())
        .map(|(n, _)| n.clone())
        .collect();
    if verified.is_empty() {
        let why = if sig.is_none() {
            "unsigned"
        } else {
            "bad signature"
        };
        tracing::warn!(reason = why, "GitHub webhook refused");
        return text(StatusCode::UNAUTHORIZED, "signature verification failed\n");
    }
    let event = header(&h, "x-github-event").unwrap_or("");
    if event == "ping" {
        return text(StatusCode::OK, "pong\n");
    }
    let user_id = match github::parse(event, &body) {
        Ok(GithubEvent::AuthorizationRevoked { user_id }) => user_id,
        Ok(GithubEvent::Ignored) => return text(StatusCode::ACCEPTED, "ignored\n"),
        Err(e) => {
            tracing::warn!(error = %e, "GitHub webhook malformed");
            return text(StatusCode::BAD_REQUEST, "malformed payload\n");
        }
    };
    // GitHub's signature covers no timestamp or id: the delivery id (unsigned) only catches
    // redeliveries; a repeated revocation is harmless to a connection that is already gone.
    let delivery = header(&h, "x-github-delivery").and_then(crate::oauth::token::identifier);
    let key = delivery.as_ref().map(|d| format!("github:{d}"));
    if let Some(k) = &key
        && !w.first_sight(k.as_bytes())
    {
        return text(StatusCode::OK, "duplicate delivery\n");
    }
    let ev = ProviderRevocation {
        source: "github",
        providers: verified,
        kind: "github_app_authorization.revoked".into(),
        affected: vec![Affected::Account {
            team: None,
            id: user_id,
        }],
        event_id: delivery,
        occurred: None,
    };
    match w.revoke(ev).await {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(()) => {
            if let Some(k) = &key {
                w.forget(k.as_bytes());
            }
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn slack_hook(State(w): State<Arc<Webhooks>>, h: HeaderMap, body: Bytes) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    }
    let secrets = w.secrets(|p| *p == Preset::Slack);
    if secrets.is_empty() {
        return text(StatusCode::NOT_FOUND, "no Slack webhook is configured\n");
    }
    let (ts, sig) = (
        header(&h, "x-slack-request-timestamp"),
        header(&h, "x-slack-signature"),
    );
    let now = unix_now();
    let mut refusal = SlackRefusal::Unsigned;
    let mut verified = Vec::new();
    for (name, s) in &secrets {
        match slack::verify(s.expose_secret(), ts, sig, &body, now) {
            Ok(()) => verified.push(name.clone()),
            Err(e) => refusal = e,
        }
    }
    if verified.is_empty() {
        tracing::warn!(reason = %refusal, "Slack request refused");
        return text(StatusCode::UNAUTHORIZED, "signature verification failed\n");
    }
    // The signature covers the timestamp, so within the five minutes an identical request is
    // a replay: acknowledged, not acted on again.
    let key = format!("slack:{}", sig.unwrap_or_default());
    if !w.first_sight(key.as_bytes()) {
        return text(StatusCode::OK, "duplicate request\n");
    }
    let (kind, team, affected, event_id, event_time) = match slack::parse(&body) {
        Ok(SlackEvent::UrlVerification { challenge }) => {
            // Answered only now that the request verified (Events API URL verification).
            return axum::Json(serde_json::json!({ "challenge": challenge })).into_response();
        }
        Ok(SlackEvent::Ignored) => return text(StatusCode::OK, "ignored\n"),
        Ok(SlackEvent::TokensRevoked {
            team,
            users,
            event_id,
            event_time,
        }) => {
            let affected = users
                .into_iter()
                .map(|id| Affected::Account {
                    team: Some(team.clone()),
                    id,
                })
                .collect();
            ("tokens_revoked", team, affected, event_id, event_time)
        }
        Ok(SlackEvent::AppUninstalled {
            team,
            event_id,
            event_time,
        }) => (
            "app_uninstalled",
            team.clone(),
            vec![Affected::Team(team)],
            event_id,
            event_time,
        ),
        Err(e) => {
            w.forget(key.as_bytes());
            tracing::warn!(error = %e, "Slack event malformed");
            return text(StatusCode::BAD_REQUEST, "malformed payload\n");
        }
    };
    tracing::info!(kind, team = %team, "Slack revocation event");
    let ev = ProviderRevocation {
        source: "slack",
        providers: verified,
        kind: kind.into(),
        affected,
        event_id,
        occurred: event_time.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()),
    };
    match w.revoke(ev).await {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(()) => {
            w.forget(key.as_bytes());
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// RFC 8935 §2.4: a failed delivery is answered 400 with `{"err", "description"}`.
fn set_error(e: &SetError) -> Response {
    tracing::warn!(err = e.code(), description = %e, "Security Event Token refused");
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "err": e.code(), "description": e.to_string() })),
    )
        .into_response()
}

async fn risc_hook(
    State(w): State<Arc<Webhooks>>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Response {
    let Some(rx) = w
        .gateway
        .config
        .providers
        .get(&provider)
        .and_then(|p| p.risc.as_ref())
    else {
        return text(StatusCode::NOT_FOUND, "no SET receiver for this provider\n");
    };
    let jws = match Jws::parse(&body) {
        Ok(j) => j,
        Err(e) => return set_error(&e),
    };
    let key = match w.jwks.key(&provider, &rx.jwks_uri, &jws.kid).await {
        Ok(k) => k,
        Err(JwksError::UnknownKid) => {
            return set_error(&SetError::InvalidKey(
                "no key with this kid in the provider's JWKS",
            ));
        }
        Err(e) => {
            // Our failure, not the sender's: a 5xx makes it deliver again later.
            tracing::error!(error = %e, "JWKS unavailable");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing keys unavailable\n",
            );
        }
    };
    let set = match jws.verify(&key).and_then(|v| v.claims(rx, unix_now())) {
        Ok(s) => s,
        Err(e) => return set_error(&e),
    };
    // Google redelivers what it thinks was lost; a `jti` already acted on is acknowledged.
    let seen_key = format!("risc:{provider}:{}", set.jti);
    if !w.first_sight(seen_key.as_bytes()) {
        return StatusCode::ACCEPTED.into_response();
    }
    let mut kinds = Vec::new();
    let mut affected = Vec::new();
    for ev in &set.events {
        match (&ev.kind, &ev.sub) {
            (EventKind::Revoke(k), Some(sub)) => {
                kinds.push(*k);
                let a = Affected::Account {
                    team: None,
                    id: sub.clone(),
                };
                if !affected.contains(&a) {
                    affected.push(a);
                }
            }
            (kind, _) => {
                let (name, outcome) = match kind {
                    EventKind::Verification => ("verification".to_owned(), "ok"),
                    EventKind::Revoke(k) => ((*k).to_owned(), "no_subject"),
                    EventKind::Other(uri) => (uri.clone(), "ignored"),
                };
                let g = w.gateway.clone();
                let jti = set.jti.clone();
                let r = tokio::task::spawn_blocking(move || {
                    g.audit_provider_event("risc", &name, outcome, Some(&jti))
                })
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    w.forget(seen_key.as_bytes());
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                }
            }
        }
    }
    if !affected.is_empty() {
        let ev = ProviderRevocation {
            source: "risc",
            providers: vec![provider.clone()],
            kind: kinds.join(","),
            affected,
            event_id: Some(set.jti.clone()),
            occurred: time::OffsetDateTime::from_unix_timestamp(set.iat).ok(),
        };
        if w.revoke(ev).await.is_err() {
            w.forget(seen_key.as_bytes());
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    }
    StatusCode::ACCEPTED.into_response()
}
