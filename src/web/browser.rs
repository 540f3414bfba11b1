//! The user's pages: login by link, the connect page, starting an authorization, the OAuth
//! callback, disconnecting. HTTP glue only: decisions live in `gateway` and `oauth`.

// The guards return the refusal page itself as their error; a response is large, but it is
// built once per request on the refusal path only.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use url::Url;

use super::AppState;
use super::pages::{esc, page, refusal};
use crate::config::{Service, ServiceKind};
use crate::gateway::Gateway;
use crate::gateway::connect::CallbackRefusal;
use crate::oauth::callback::{self, Outcome};
use crate::oauth::client::ClientCredentials;
use crate::oauth::dpop::DpopKey;
use crate::store::{ConnectionStatus, User};

pub const COOKIE: &str = "scopegate_session";
/// With an https public URL the cookie gets the `__Host-` prefix (RFC 6265bis §4.1.3.2):
/// Secure, host-only, path `/`.
pub const HOST_COOKIE: &str = "__Host-scopegate_session";

fn cookie_name(state: &AppState) -> &'static str {
    if state.public_url.scheme() == "https" {
        HOST_COOKIE
    } else {
        COOKIE
    }
}

pub fn session_cookie(headers: &HeaderMap, state: &AppState) -> Option<Vec<u8>> {
    let name = cookie_name(state);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes().to_vec())
}

fn set_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        cookie_name(state)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn internal() -> Response {
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The gateway could not complete this request; the details are in its log.",
    )
}

/// The signed-in user, or a page explaining how to sign in.
async fn require_user(state: &AppState, headers: &HeaderMap) -> Result<(User, Vec<u8>), Response> {
    let no = || {
        refusal(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "Open the login link your administrator gave you (scopegate user link NAME).",
        )
    };
    let Some(session) = session_cookie(headers, state) else {
        return Err(no());
    };
    let g = state.gateway.clone();
    let s2 = session.clone();
    match blocking(move || g.session_user(&s2)).await {
        Some(Ok(Some(u))) => Ok((u, session)),
        Some(Ok(None)) => Err(no()),
        _ => Err(internal()),
    }
}

/// A POST must come from our own pages. The CSRF token (an HMAC of the session) is the
/// defence; as defence in depth, refuse a foreign `Origin` and cross-site `Sec-Fetch-Site`.
/// `Origin: null` is let through to the token check: with `Referrer-Policy: no-referrer`
/// (which flow pages must send) browsers send exactly that for same-origin form posts.
fn check_post(
    state: &AppState,
    headers: &HeaderMap,
    session: &[u8],
    form: &[(String, String)],
) -> Result<(), Response> {
    let foreign = || {
        refusal(
            StatusCode::FORBIDDEN,
            "Refused",
            "This request came from another site.",
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != "null"
        && origin != state.public_url.origin().ascii_serialization()
    {
        return Err(foreign());
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site, "cross-site" | "same-site")
    {
        return Err(foreign());
    }
    let token = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !state.gateway.csrf_ok(session, token) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form has expired; reload the page and try again.",
        ));
    }
    Ok(())
}

/// The signed-in user of a form POST that passed the CSRF and origin checks.
async fn signed_in_post(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(User, Vec<u8>), Response> {
    let (user, session) = require_user(state, headers).await?;
    check_post(state, headers, &session, &parse_form(body))?;
    Ok((user, session))
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub async fn login_page(RawQuery(q): RawQuery) -> Response {
    let token = q
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<Vec<_>>()
        })
        .and_then(|v| v.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v))
        .unwrap_or_default();
    // A button, not an automatic sign-in: link previewers that fetch the URL do not spend it.
    page(
        StatusCode::OK,
        "Sign in to Scopegate",
        &format!(
            "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"token\" value=\"{}\"><button type=\"submit\">Sign in</button></form>",
            esc(&token)
        ),
    )
}

/// Login CSRF (RFC 9700 §4.7.1): another site must not sign this browser into someone else's
/// account, so the login form only works when posted from our own page.
fn same_site_post(state: &AppState, headers: &HeaderMap) -> bool {
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| o == "null" || o == state.public_url.origin().ascii_serialization());
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| !matches!(s, "cross-site" | "same-site"));
    origin_ok && site_ok
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !same_site_post(&state, &headers) {
        return refusal(
            StatusCode::FORBIDDEN,
            "Refused",
            "This sign-in came from another site.",
        );
    }
    let form = parse_form(&body);
    let token = form
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let g = state.gateway.clone();
    match blocking(move || g.login(token.as_bytes())).await {
        Some(Ok((session, _user))) => {
            let value = String::from_utf8_lossy(session.expose_secret()).into_owned();
            let mut r = Redirect::to("/connect").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&state, &value, 12 * 3600));
            r
        }
        Some(Err(crate::gateway::GatewayError::Store(crate::store::StoreError::NotFound(m)))) => {
            refusal(StatusCode::BAD_REQUEST, "Sign-in failed", &m)
        }
        _ => internal(),
    }
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (_, session) = match signed_in_post(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let g = state.gateway.clone();
    let _ = blocking(move || g.logout(&session)).await;
    let mut r = page(StatusCode::OK, "Signed out", "<p>You are signed out.</p>");
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, "", 0));
    r
}

pub async fn connect_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (user, session) = match require_user(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let g = state.gateway.clone();
    let uid = user.id.clone();
    let Some(Ok(conns)) =
        blocking(move || g.store.read().and_then(|r| r.user_connections(&uid))).await
    else {
        return internal();
    };
    let csrf = state.gateway.csrf_token(&session);
    let params: Vec<(String, String)> = q
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let mut body = String::new();
    for (k, v) in &params {
        let msg = match k.as_str() {
            "connected" => format!("<p class=\"note ok\">Connected <b>{}</b>.</p>", esc(v)),
            "disconnected" => format!("<p class=\"note\">Disconnected <b>{}</b>.</p>", esc(v)),
            // A narrowing link from the scope audit: offered as a button (a POST with the
            // CSRF token), never started by the GET itself; only scopes the configured set
            // already covers are accepted, so a link cannot widen a grant.
            "narrow" => {
                let requested = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                match state.gateway.narrowed_scopes(v, requested) {
                    Some(scopes) => format!(
                        "<p class=\"note\">Your administrator asks you to reconnect <b>{n}</b> with fewer permissions: <b>{s}</b>.</p>\
                         <form method=\"post\" action=\"/connect/{n}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                         <input type=\"hidden\" name=\"scope\" value=\"{s}\"><button type=\"submit\">Reconnect {n} with only these scopes</button></form>",
                        n = esc(v),
                        s = esc(&scopes.join(" "))
                    ),
                    None => "<p class=\"note bad\">That reconnect link asks for scopes this service does not allow; it was ignored.</p>".to_owned(),
                }
            }
            "unrevoked" => format!(
                "<p class=\"note bad\">The provider of <b>{}</b> could not be reached to revoke the tokens; they were deleted here. Revoke the app's access in your account settings there too.</p>",
                esc(v)
            ),
            _ => continue,
        };
        body.push_str(&msg);
    }
    body.push_str(&format!(
        "<p>Signed in as <b>{}</b>.</p><table><tr><th>Service</th><th>Status</th><th></th></tr>",
        esc(&user.name)
    ));
    for (name, svc) in &state.gateway.config.services {
        let conn = conns.iter().find(|c| &c.service == name);
        let status = match conn {
            Some(c) if c.status == ConnectionStatus::NeedsReauth => format!(
                "<span class=\"bad\">needs reconnecting</span>{}",
                c.status_reason
                    .as_deref()
                    .map(|r| format!("<br><small>{}</small>", esc(r)))
                    .unwrap_or_default()
            ),
            Some(c) => {
                let scopes = if c.scopes.is_empty() {
                    String::new()
                } else {
                    format!("<br><small>scopes: {}</small>", esc(&c.scopes.join(" ")))
                };
                let expiry = c
                    .access_expires
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .map(|t| format!("<br><small>access token expires {}</small>", esc(&t)))
                    .unwrap_or_default();
                format!("<span class=\"ok\">connected</span>{scopes}{expiry}")
            }
            None => "not connected".to_owned(),
        };
        let actions = match (&svc.kind, conn) {
            (ServiceKind::ApiKey { .. }, _) => {
                "<small>API key, set by your administrator</small>".to_owned()
            }
            (ServiceKind::Oauth { .. }, c) => {
                let label = if c.is_some() { "Reconnect" } else { "Connect" };
                let mut a = format!(
                    "<form method=\"post\" action=\"/connect/{n}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">{label}</button></form>",
                    n = esc(name)
                );
                if c.is_some() {
                    a.push_str(&format!(
                        " <form method=\"post\" action=\"/connect/{n}/disconnect\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Disconnect</button></form>",
                        n = esc(name)
                    ));
                }
                a
            }
        };
        body.push_str(&format!(
            "<tr><td><b>{}</b></td><td>{status}</td><td>{actions}</td></tr>",
            esc(name)
        ));
    }
    body.push_str(&format!(
        "</table><p><form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Sign out</button></form></p>"
    ));
    page(StatusCode::OK, "Your connections", &body)
}

fn oauth_service<'a>(
    g: &'a Gateway,
    name: &str,
) -> Option<(&'a Service, &'a str, &'a [String], Option<&'a Url>)> {
    let svc = g.config.services.get(name)?;
    match &svc.kind {
        ServiceKind::Oauth {
            provider,
            scopes,
            resource,
        } => Some((svc, provider.as_str(), scopes.as_slice(), resource.as_ref())),
        ServiceKind::ApiKey { .. } => None,
    }
}

pub fn redirect_uri(state: &AppState) -> String {
    // Always from the configured public URL, never from Host or X-Forwarded-* (RFC 9700 §4.1).
    format!(
        "{}/oauth/callback",
        state.public_url.as_str().trim_end_matches('/')
    )
}

pub async fn begin(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (user, session) = match signed_in_post(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let g = state.gateway.clone();
    let Some((_, provider_name, scopes, resource)) = oauth_service(&g, &service) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "Unknown service",
            "There is no OAuth service by that name.",
        );
    };
    let Some(provider) = g.config.providers.get(provider_name) else {
        return internal();
    };
    let rp = match state.oauth.resolve(provider_name, provider).await {
        Ok(rp) => rp,
        Err(e) => {
            tracing::warn!(service = %service, error = %e, "cannot use the provider");
            return refusal(
                StatusCode::BAD_GATEWAY,
                "Cannot connect",
                &format!("The provider for {service} cannot be used: {e}"),
            );
        }
    };
    // A narrowing reconnect (from the scope audit's link) asks for fewer scopes, never more.
    let mut scopes: Vec<String> = match parse_form(&body).into_iter().find(|(k, _)| k == "scope") {
        None => scopes.to_vec(),
        Some((_, requested)) => match g.narrowed_scopes(&service, &requested) {
            Some(narrow) => narrow,
            None => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "Cannot connect",
                    "The scopes asked for are not a subset of what this service is configured to use.",
                );
            }
        },
    };
    for s in &rp.implied_scopes {
        if !scopes.iter().any(|x| x == s) {
            scopes.push((*s).to_owned());
        }
    }
    let redirect = redirect_uri(&state);
    let iss_req = rp.iss_supported;
    let dpop = rp.dpop;
    let (g2, u2, s2, svc2, iss2, sc2, r2) = (
        g.clone(),
        user.clone(),
        session.clone(),
        service.clone(),
        rp.issuer.clone(),
        scopes.clone(),
        redirect.clone(),
    );
    let begun = match blocking(move || {
        let target = crate::gateway::connect::FlowTarget {
            service: &svc2,
            issuer: iss2.as_deref(),
            iss_required: iss_req,
            scopes: &sc2,
            redirect_uri: &r2,
            dpop,
        };
        g2.begin_connect(&u2, &s2, &target)
    })
    .await
    {
        Some(Ok(b)) => b,
        Some(Err(crate::gateway::GatewayError::Store(crate::store::StoreError::Conflict(m)))) => {
            return refusal(StatusCode::TOO_MANY_REQUESTS, "Cannot connect now", &m);
        }
        _ => return internal(),
    };
    let mut url = rp.authorization_endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", &redirect)
            .append_pair(rp.scope_param, &scopes.join(" "))
            .append_pair(
                "state",
                &String::from_utf8_lossy(begun.state.expose_secret()),
            )
            .append_pair("code_challenge", &begun.code_challenge)
            .append_pair("code_challenge_method", "S256");
        if let (Some(r), true) = (resource, rp.send_resource) {
            q.append_pair("resource", r.as_str());
        }
        // RFC 9449 §10: the code is bound to the key, so a stolen code is useless too.
        if let Some(jkt) = &begun.dpop_jkt {
            q.append_pair("dpop_jkt", jkt);
        }
        for (k, v) in &rp.extra_authorize_params {
            q.append_pair(k, v);
        }
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let parsed = match callback::parse(q.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &format!("The response was malformed: {e}."),
            );
        }
    };
    let Some(st) = parsed.state.clone() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            "The response has no state; start again from the connect page.",
        );
    };
    let session = session_cookie(&headers, &state);
    // Where the pending authorization says it went, and whether that server promised `iss`.
    let g = state.gateway.clone();
    let st2 = st.clone();
    let pending_service = blocking(move || {
        g.store
            .read()
            .ok()?
            .pending(&crate::oauth::pkce::lookup_hash(st2.as_bytes()))
            .ok()?
    })
    .await
    .flatten();
    // Whether `iss` is required was fixed when the flow began (not rediscovered now, so
    // a discovery failure cannot turn the check off).
    let iss_required = pending_service.as_ref().is_some_and(|p| p.iss_required);
    let g = state.gateway.clone();
    let (st3, sess3, iss3) = (st.clone(), session.clone(), parsed.iss.clone());
    let checked =
        blocking(move || g.check_callback(&st3, sess3.as_deref(), iss3.as_deref(), iss_required))
            .await;
    let pending = match checked {
        Some(Ok(p)) => p,
        Some(Err(refusal_reason)) => {
            tracing::info!(reason = %refusal_reason, "refused an OAuth callback");
            return refusal(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &refusal_reason.to_string(),
            );
        }
        None => return internal(),
    };
    let g = state.gateway.clone();
    let uid = pending.user_id.clone();
    let Some(Ok(Some(user))) = blocking(move || g.store.read().and_then(|r| r.user(&uid))).await
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            "The user who started this sign-in no longer exists.",
        );
    };
    let code = match &parsed.outcome {
        Outcome::Error(e) => {
            let g = state.gateway.clone();
            let (p2, name) = (pending.clone(), user.name.clone());
            let _ = blocking(move || g.consume_pending(&p2, &name, "provider_error")).await;
            let mut text = format!(
                "{} was not connected. The provider answered: {}",
                pending.service, e.error
            );
            if let Some(d) = &e.description {
                text.push_str(&format!(" ({d})"));
            }
            return refusal(StatusCode::BAD_REQUEST, "Not connected", &text);
        }
        Outcome::Code(c) => c.clone(),
    };
    let g = state.gateway.clone();
    let (p2, name) = (pending.clone(), user.name.clone());
    let secrets = match blocking(move || g.consume_pending(&p2, &name, "code")).await {
        Some(Ok(Some(v))) => v,
        Some(Ok(None)) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &CallbackRefusal::UnknownState.to_string(),
            );
        }
        _ => return internal(),
    };
    let Some((_, provider_name, _, resource)) = oauth_service(&state.gateway, &pending.service)
    else {
        return internal();
    };
    let Some(provider) = state.gateway.config.providers.get(provider_name) else {
        return internal();
    };
    let rp = match state.oauth.resolve(provider_name, provider).await {
        Ok(rp) => rp,
        Err(e) => {
            return refusal(
                StatusCode::BAD_GATEWAY,
                "Not connected",
                &format!("The provider cannot be used: {e}"),
            );
        }
    };
    let creds = match ClientCredentials::load(provider_name, provider) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "client credentials");
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not connected",
                "The gateway's client credentials for this provider are not available; see its log.",
            );
        }
    };
    let dpop_key = match secrets
        .dpop_key
        .as_ref()
        .map(|k| DpopKey::from_pkcs8(k.expose_secret()))
    {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            tracing::error!(error = %e, "the sign-in's DPoP key");
            return internal();
        }
    };
    let mut tokens = match state
        .oauth
        .exchange_code(
            &rp,
            &creds,
            &code,
            secrets.verifier.expose_secret(),
            &pending.redirect_uri,
            resource,
            dpop_key.as_ref(),
        )
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(service = %pending.service, error = %e, "code exchange failed");
            return refusal(
                StatusCode::BAD_GATEWAY,
                "Not connected",
                &format!("{} was not connected: {e}", pending.service),
            );
        }
    };
    // GitHub's token response names no account; its revocation webhook names the user id.
    if tokens.subject.is_none()
        && tokens.token_type == crate::oauth::token::TokenType::Bearer
        && matches!(
            rp.revocation,
            crate::oauth::provider::Revocation::GitHub { .. }
        )
    {
        match state
            .oauth
            .github_user_id(tokens.access_token.expose_secret())
            .await
        {
            Ok(id) => tokens.subject = Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "GitHub user id unknown; revocation webhooks will not find this connection")
            }
        }
    }
    // RFC 6749 §5.1: no `scope` in the response means exactly what was asked was granted.
    let granted = tokens
        .scope
        .clone()
        .unwrap_or_else(|| pending.scopes.clone());
    let g = state.gateway.clone();
    let p2 = pending.clone();
    let tokens = Arc::new(tokens);
    let key = secrets.dpop_key;
    match blocking(move || g.finish_connect(&user, &p2, &tokens, granted, key.as_ref())).await {
        Some(Ok(_)) => {
            let target = format!(
                "/connect?connected={}",
                url::form_urlencoded::byte_serialize(pending.service.as_bytes())
                    .collect::<String>()
            );
            Redirect::to(&target).into_response()
        }
        _ => internal(),
    }
}

pub async fn disconnect(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (user, _) = match signed_in_post(&state, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let g = state.gateway.clone();
    let (uid, svc) = (user.id.clone(), service.clone());
    let conn = match blocking(move || g.live_connection(&uid, &svc)).await {
        Some(Ok(Some(c))) => c,
        Some(Ok(None)) => {
            return refusal(
                StatusCode::NOT_FOUND,
                "Not connected",
                "You have no connection to that service.",
            );
        }
        _ => return internal(),
    };
    let provider_note = revoke_at_provider(&state, &conn).await;
    let g = state.gateway.clone();
    let (id, actor, note) = (conn.id.clone(), user.name.clone(), provider_note.clone());
    match blocking(move || g.connection_revoke_noting(&id, &actor, Some(&note))).await {
        Some(Ok(_)) => {
            let key = if provider_note == "ok" || provider_note == "not applicable" {
                "disconnected"
            } else {
                "unrevoked"
            };
            let enc = url::form_urlencoded::byte_serialize(service.as_bytes()).collect::<String>();
            Redirect::to(&format!("/connect?{key}={enc}")).into_response()
        }
        _ => internal(),
    }
}

/// RFC 7009 at the provider, best effort: the outcome is recorded, and local deletion goes
/// ahead either way.
pub async fn revoke_at_provider(state: &AppState, conn: &crate::store::Connection) -> String {
    let Some((_, provider_name, _, _)) = oauth_service(&state.gateway, &conn.service) else {
        return "not applicable".into();
    };
    let Some(provider) = state.gateway.config.providers.get(provider_name) else {
        return "not applicable".into();
    };
    let g = state.gateway.clone();
    let c2 = conn.clone();
    let Some(Ok((access, refresh))) = blocking(move || g.connection_tokens(&c2)).await else {
        return "failed: tokens unreadable".into();
    };
    let rp = match state.oauth.resolve(provider_name, provider).await {
        Ok(rp) => rp,
        Err(e) => return format!("failed: {e}"),
    };
    let creds = match ClientCredentials::load(provider_name, provider) {
        Ok(c) => c,
        Err(e) => return format!("failed: {e}"),
    };
    match state
        .oauth
        .revoke_refresh_then_access(
            &rp,
            &creds,
            refresh.as_ref().map(|r| r.expose_secret()),
            access.as_ref().map(|a| a.expose_secret()),
        )
        .await
    {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed: {e}"),
    }
}
