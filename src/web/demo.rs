//! The demo authorization server of `serve --dev`: a small but real OAuth 2.1 server under
//! `/demo/oauth/` so the whole loop runs with no accounts anywhere. Codes are bound to client,
//! redirect URI and PKCE challenge (RFC 7636 §4.6) and work once (a replay revokes what they
//! issued, RFC 6749 §4.1.2); refresh tokens rotate, and a rotated one coming back revokes the
//! whole family (RFC 9700 §4.14.2); RFC 7009 revocation; RFC 8414 metadata; RFC 9207 `iss`.
//! State is in memory and dies with the process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;

use super::pages::{esc, harden, page};
use crate::oauth::pkce::{lookup_hash, random_token, s256_challenge};
use crate::secret::ClientSecret;

const CODE_TTL: Duration = Duration::from_secs(60);
const REQUEST_TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 10_000;
pub const SCOPES: [&str; 2] = ["demo.read", "demo.write"];

pub struct DemoProvider {
    pub issuer: String,
    pub client_id: String,
    client_secret: ClientSecret,
    pub redirect_uri: String,
    access_ttl: u64,
    state: Mutex<DemoState>,
    pub token_requests: AtomicU64,
    pub reuse_detected: AtomicU64,
    pub revocations: AtomicU64,
}

#[derive(Default)]
struct DemoState {
    requests: HashMap<String, AuthRequest>,
    codes: HashMap<String, Code>,
    refresh: HashMap<String, Refresh>,
    revoked_families: std::collections::HashSet<u64>,
    access: HashMap<String, Access>,
    next_family: u64,
}

#[derive(Clone)]
struct AuthRequest {
    redirect_uri: String,
    scopes: Vec<String>,
    state: String,
    challenge: String,
    created: Instant,
}

struct Code {
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    account: String,
    created: Instant,
    used: bool,
    family: u64,
}

struct Refresh {
    family: u64,
    scopes: Vec<String>,
    account: String,
    used: bool,
}

/// What the demo MCP upstream learns from an access token.
#[derive(Clone, Debug)]
pub struct Access {
    pub account: String,
    pub scopes: Vec<String>,
    pub expires: Instant,
    family: u64,
}

impl DemoProvider {
    pub fn new(public_url: &str, client_secret: ClientSecret, access_ttl: u64) -> Self {
        let base = public_url.trim_end_matches('/');
        Self {
            issuer: format!("{base}/demo/oauth"),
            client_id: "scopegate-dev".into(),
            client_secret,
            redirect_uri: format!("{base}/oauth/callback"),
            access_ttl,
            state: Mutex::new(DemoState::default()),
            token_requests: AtomicU64::new(0),
            reuse_detected: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DemoState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a demo; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account and scopes behind a live access token (for the demo upstream).
    pub fn introspect(&self, token: &str) -> Option<Access> {
        let st = self.lock();
        let a = st.access.get(&lookup_hash(token.as_bytes()))?;
        (a.expires > Instant::now() && !st.revoked_families.contains(&a.family)).then(|| a.clone())
    }

    fn client_ok(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let (id, secret) = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            Some(h) if h.starts_with("Basic ") => {
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&h[6..]) else {
                    return false;
                };
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let Some((i, s)) = raw.split_once(':') else {
                    return false;
                };
                let dec = |x: &str| {
                    url::form_urlencoded::parse(format!("a={x}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                (dec(i), dec(s))
            }
            _ => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        id == self.client_id
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                secret.as_bytes(),
                self.client_secret.expose_secret(),
            ))
    }
}

pub fn routes(demo: Arc<DemoProvider>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server/demo/oauth",
            get(metadata),
        )
        .route("/demo/oauth/authorize", get(authorize))
        .route("/demo/oauth/decide", post(decide))
        .route("/demo/oauth/token", post(token))
        .route("/demo/oauth/revoke", post(revoke))
        .route("/demo/oauth/stats", get(stats))
        .with_state(demo)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

async fn metadata(State(d): State<Arc<DemoProvider>>) -> Response {
    let i = &d.issuer;
    json(
        StatusCode::OK,
        serde_json::json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "revocation_endpoint": format!("{i}/revoke"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": SCOPES,
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

fn params(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut u) = url::Url::parse(redirect_uri) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "<p>Invalid redirect URI.</p>",
        );
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(u.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn authorize(State(d): State<Arc<DemoProvider>>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref());
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    // Client and redirect URI are checked first; with either wrong, nothing redirects
    // (RFC 6749 §4.1.2.1).
    if get("client_id") != d.client_id || get("redirect_uri") != d.redirect_uri {
        return harden(page(
            StatusCode::BAD_REQUEST,
            "Demo provider",
            "<p>Unknown client or redirect URI.</p>",
        ));
    }
    let state = get("state");
    let fail = |e: &str| {
        redirect_with(
            &d.redirect_uri,
            &[("error", e), ("state", &state), ("iss", &d.issuer)],
        )
    };
    if get("response_type") != "code" {
        return fail("unsupported_response_type");
    }
    let challenge = get("code_challenge");
    if get("code_challenge_method") != "S256" || challenge.len() != 43 {
        return fail("invalid_request");
    }
    let scopes: Vec<String> = get("scope")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return fail("invalid_scope");
    }
    let id = String::from_utf8_lossy(random_token().expose_secret()).into_owned();
    {
        let mut st = d.lock();
        st.requests.retain(|_, r| r.created.elapsed() < REQUEST_TTL);
        if st.requests.len() >= MAX_ENTRIES {
            return fail("temporarily_unavailable");
        }
        st.requests.insert(
            id.clone(),
            AuthRequest {
                redirect_uri: d.redirect_uri.clone(),
                scopes: scopes.clone(),
                state,
                challenge,
                created: Instant::now(),
            },
        );
    }
    let boxes: String = scopes
        .iter()
        .map(|s| format!("<label><input type=\"checkbox\" name=\"scope\" value=\"{0}\" checked> {0}</label><br>", esc(s)))
        .collect();
    harden(page(
        StatusCode::OK,
        "Demo provider: allow access?",
        &format!(
            "<p><b>{}</b> asks to act on your demo account with these scopes. Untick any you do not want to grant.</p>\
             <form method=\"post\" action=\"/demo/oauth/decide\"><input type=\"hidden\" name=\"id\" value=\"{}\">{boxes}\
             <p><label>Demo account: <input name=\"account\" value=\"demo-user\"></label></p>\
             <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            esc(&d.client_id),
            esc(&id)
        ),
    ))
}

async fn decide(State(d): State<Arc<DemoProvider>>, body: axum::body::Bytes) -> Response {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let Some(req) = d.lock().requests.remove(&one("id")) else {
        return harden(page(
            StatusCode::BAD_REQUEST,
            "Demo provider",
            "<p>This request is unknown or was already answered.</p>",
        ));
    };
    if one("decision") != "approve" {
        return redirect_with(
            &req.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "The user denied the request"),
                ("state", &req.state),
                ("iss", &d.issuer),
            ],
        );
    }
    // Only scopes that were asked for and left ticked are granted.
    let granted: Vec<String> = pairs
        .iter()
        .filter(|(k, v)| k == "scope" && req.scopes.contains(v))
        .map(|(_, v)| v.clone())
        .collect();
    let account: String = one("account")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let code = String::from_utf8_lossy(random_token().expose_secret()).into_owned();
    {
        let mut st = d.lock();
        st.codes.retain(|_, c| c.created.elapsed() < CODE_TTL * 5);
        st.next_family += 1;
        let family = st.next_family;
        st.codes.insert(
            lookup_hash(code.as_bytes()),
            Code {
                redirect_uri: req.redirect_uri.clone(),
                challenge: req.challenge.clone(),
                scopes: granted,
                account: if account.is_empty() {
                    "demo-user".into()
                } else {
                    account
                },
                created: Instant::now(),
                used: false,
                family,
            },
        );
    }
    redirect_with(
        &req.redirect_uri,
        &[("code", &code), ("state", &req.state), ("iss", &d.issuer)],
    )
}

fn issue(
    d: &DemoProvider,
    st: &mut DemoState,
    family: u64,
    scopes: &[String],
    account: &str,
) -> Response {
    let access = String::from_utf8_lossy(random_token().expose_secret()).into_owned();
    let refresh = String::from_utf8_lossy(random_token().expose_secret()).into_owned();
    if st.access.len() >= MAX_ENTRIES {
        st.access.retain(|_, a| a.expires > Instant::now());
    }
    st.access.insert(
        lookup_hash(access.as_bytes()),
        Access {
            account: account.to_owned(),
            scopes: scopes.to_vec(),
            expires: Instant::now() + Duration::from_secs(d.access_ttl),
            family,
        },
    );
    st.refresh.insert(
        lookup_hash(refresh.as_bytes()),
        Refresh {
            family,
            scopes: scopes.to_vec(),
            account: account.to_owned(),
            used: false,
        },
    );
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": access, "token_type": "Bearer", "expires_in": d.access_ttl,
            "refresh_token": refresh, "scope": scopes.join(" "),
        }),
    )
}

/// A single-use credential came back: revoke its whole family (RFC 9700 §4.14.2).
fn replay_detected(d: &DemoProvider, st: &mut DemoState, family: u64, why: &str) -> Response {
    st.revoked_families.insert(family);
    d.reuse_detected.fetch_add(1, Ordering::Relaxed);
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
}

async fn token(
    State(d): State<Arc<DemoProvider>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    d.token_requests.fetch_add(1, Ordering::Relaxed);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !d.client_ok(&headers, &form) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut st = d.lock();
    match get("grant_type").as_str() {
        "authorization_code" => {
            let key = lookup_hash(get("code").as_bytes());
            let Some(code) = st.codes.get_mut(&key) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
            };
            if code.used {
                // A replayed code: revoke everything it issued.
                let fam = code.family;
                return replay_detected(&d, &mut st, fam, "code already used");
            }
            code.used = true;
            if code.created.elapsed() > CODE_TTL || code.redirect_uri != get("redirect_uri") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "expired code or redirect_uri mismatch",
                );
            }
            let verifier = get("code_verifier");
            let ok = verifier.len() >= 43
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    s256_challenge(verifier.as_bytes()).as_bytes(),
                    code.challenge.as_bytes(),
                ));
            if !ok {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            let (family, scopes, account) =
                (code.family, code.scopes.clone(), code.account.clone());
            issue(&d, &mut st, family, &scopes, &account)
        }
        "refresh_token" => {
            let key = lookup_hash(get("refresh_token").as_bytes());
            let Some(r) = st.refresh.get_mut(&key) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            let family = r.family;
            if r.used {
                return replay_detected(
                    &d,
                    &mut st,
                    family,
                    "refresh token reuse detected; grant revoked",
                );
            }
            r.used = true;
            let (scopes, account) = (r.scopes.clone(), r.account.clone());
            if st.revoked_families.contains(&family) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "grant revoked");
            }
            issue(&d, &mut st, family, &scopes, &account)
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "use authorization_code or refresh_token",
        ),
    }
}

async fn revoke(
    State(d): State<Arc<DemoProvider>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !d.client_ok(&headers, &form) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    d.revocations.fetch_add(1, Ordering::Relaxed);
    let key = lookup_hash(form.get("token").map(String::as_bytes).unwrap_or_default());
    let mut st = d.lock();
    let family = st
        .refresh
        .get(&key)
        .map(|r| r.family)
        .or_else(|| st.access.get(&key).map(|a| a.family));
    if let Some(f) = family {
        st.revoked_families.insert(f);
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    StatusCode::OK.into_response()
}

async fn stats(State(d): State<Arc<DemoProvider>>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "token_requests": d.token_requests.load(Ordering::Relaxed),
            "reuse_detected": d.reuse_detected.load(Ordering::Relaxed),
            "revocations": d.revocations.load(Ordering::Relaxed),
        }),
    )
}
