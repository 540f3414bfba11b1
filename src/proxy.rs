//! The MCP proxy at `/mcp/{service}`: authenticates the agent on every request (I11), applies
//! its profile before anything reaches upstream (I12), swaps credentials — the agent's never
//! goes upstream, the provider's never comes back (I13) — binds upstream sessions to the agent
//! that opened them (I14), and streams the answer back as it arrives.

pub mod audit_queue;
pub mod jsonrpc;
pub mod upstream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::config::ServiceKind;
use crate::gateway::Gateway;
use crate::gateway::agents::Principal;
use crate::gateway::connect::ACCESS_FIELD;
use crate::oauth::dpop::{DpopKey, Nonces};
use crate::policy::{self, Decision};
use crate::store::Connection;
use crate::store::ConnectionStatus;
use crate::store::audit::cap_untrusted;
use audit_queue::{AuditQueue, CallRecord};
use jsonrpc::Message;

/// The first revision without sessions (stateless MCP, SEP-2575).
const STATELESS_REVISION: &str = "2026-07-28";
/// JSON-RPC codes: header/body mismatch (2026-07-28 transports), URL elicitation required
/// (2025-11-25 `-32042`), and our own "not permitted".
const HEADER_MISMATCH: i64 = -32020;
const URL_ELICITATION_REQUIRED: i64 = -32042;
const NOT_PERMITTED: i64 = -32003;
const MAX_SESSIONS: usize = 100_000;
const TOOLS_LIST_CAP: usize = 4 * 1024 * 1024;
/// Request headers passed upstream; everything else (Authorization, Cookie, …) is dropped.
const FORWARD_REQUEST: [&str; 6] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];
/// Response headers passed back; upstream's WWW-Authenticate and cookies are not the agent's.
const FORWARD_RESPONSE: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    MCP_SESSION_ID,
    MCP_PROTOCOL_VERSION,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];
// Header names made once, not parsed from a string on every call.
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Upstream session ids bound to (service, agent) (I14), with a cap: at the cap the oldest
/// binding goes, never all of them.
#[derive(Default)]
struct Sessions {
    owner: HashMap<(String, String), String>,
    order: std::collections::VecDeque<(String, String)>,
}

impl Sessions {
    fn bind(&mut self, service: &str, sid: &str, agent: &str) {
        let key = (service.to_owned(), sid.to_owned());
        if self.owner.insert(key.clone(), agent.to_owned()).is_none() {
            self.order.push_back(key);
        }
        while self.owner.len() > MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.owner.remove(&old);
            }
        }
    }

    fn owner(&self, service: &str, sid: &str) -> Option<&String> {
        self.owner.get(&(service.to_owned(), sid.to_owned()))
    }

    fn unbind(&mut self, service: &str, sid: &str) {
        self.owner.remove(&(service.to_owned(), sid.to_owned()));
    }
}

/// Holds one of an agent's in-flight places (its counter is shared by all the agent's
/// principals); given back when the response body (an SSE stream included) is finished or
/// abandoned.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        // Taken first, checked after: two racing takers may both be refused at the cap, never
        // both admitted past it.
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live connection and its decrypted credential. `SecretBytes` zeroizes when the last
/// reference goes, so the in-memory copy lives no longer than the cache entry and the
/// requests using it.
#[derive(Clone)]
struct Credential {
    conn: Arc<crate::store::Connection>,
    secret: Arc<crate::secret::SecretBytes>,
    /// The key a DPoP-bound access token must be presented with (RFC 9449 §7).
    dpop: Option<Arc<DpopKey>>,
}

/// Per service (each service's cache is its own).
const MAX_CACHED_CREDENTIALS: usize = 100_000;

/// A service's credentials by user id, each tagged with the store's connections generation
/// when it was read: a write to that connection (refresh, revoke, re-key) makes older copies
/// unusable before the writer returns, so a revoked token is never served from memory, while
/// writes to other connections (a refresh storm) leave it usable.
#[derive(Default)]
struct CredentialCache {
    inner: Mutex<HashMap<String, (u64, Credential)>>,
}

impl CredentialCache {
    fn get(&self, store: &crate::store::Store, user: &str, service: &str) -> Option<Credential> {
        let m = self.inner.lock().ok()?;
        let (loaded_at, c) = m.get(user)?;
        store
            .connection_unchanged_since(user, service, *loaded_at)
            .then(|| c.clone())
    }

    fn put(&self, user: String, generation: u64, c: Credential) {
        if let Ok(mut m) = self.inner.lock() {
            if m.len() >= MAX_CACHED_CREDENTIALS {
                m.clear();
            }
            m.insert(user, (generation, c));
        }
    }
}

/// A service as the proxy uses it, made once at start rather than per call.
struct Target {
    svc: crate::config::Service,
    /// The service's name, shared by every call's audit record.
    name: Arc<str>,
    origin: upstream::Origin,
    /// An API-key service's own header (`None`: `Authorization`).
    key_header: Option<HeaderName>,
    credentials: CredentialCache,
}

pub struct Proxy {
    pub gateway: Arc<Gateway>,
    targets: HashMap<String, Target>,
    stream_idle: Duration,
    /// Upstream session id → (service, agent id) that opened it (I14).
    sessions: Mutex<Sessions>,
    pub audit: AuditQueue,
    public_origin: String,
    connect_url: String,
    pub response_start_timeout: Duration,
    pub refresher: Arc<crate::lifecycle::Refresher>,
    dpop_nonces: Arc<Nonces>,
}

impl Proxy {
    pub fn new(
        gateway: Arc<Gateway>,
        audit: AuditQueue,
        refresher: Arc<crate::lifecycle::Refresher>,
    ) -> Self {
        #[allow(clippy::expect_used)] // the platform's roots load at start or nothing works.
        upstream::tls_config().expect("TLS roots for the upstream client");
        let targets = gateway
            .config
            .services
            .iter()
            .filter_map(|(name, svc)| {
                let origin = match svc
                    .mcp_url
                    .as_str()
                    .parse::<Uri>()
                    .map_err(|e| e.to_string())
                    .and_then(upstream::Origin::new)
                {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(service = %name, error = %e, "mcp_url is not a usable URI");
                        return None;
                    }
                };
                let key_header = match &svc.kind {
                    ServiceKind::ApiKey { header, .. }
                        if !header.eq_ignore_ascii_case("authorization") =>
                    {
                        Some(HeaderName::from_bytes(header.as_bytes()).ok()?)
                    }
                    _ => None,
                };
                let target = Target {
                    svc: svc.clone(),
                    name: Arc::from(name.as_str()),
                    origin,
                    key_header,
                    credentials: CredentialCache::default(),
                };
                Some((name.clone(), target))
            })
            .collect();
        let public = gateway.config.public_url.clone();
        Self {
            targets,
            // A stream that sends nothing (not even a heartbeat) for this long is cut.
            stream_idle: Duration::from_secs(gateway.config.limits.stream_idle_timeout_secs),
            sessions: Mutex::new(Sessions::default()),
            audit,
            public_origin: public.origin().ascii_serialization(),
            connect_url: format!("{}/connect", public.as_str().trim_end_matches('/')),
            response_start_timeout: Duration::from_secs(
                gateway.config.limits.upstream_response_timeout_secs,
            ),
            dpop_nonces: refresher.dpop_nonces(),
            refresher,
            gateway,
        }
    }
}

impl Proxy {
    /// An admin's "refresh now": through the same single-flight refresher agents use (I15).
    pub async fn refresh_now(&self, id: &str) -> Result<(), String> {
        let g = self.gateway.clone();
        let id2 = id.to_owned();
        let conn = tokio::task::spawn_blocking(move || g.store.read()?.connection(&id2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no connection with id {id}"))?;
        if conn.kind != crate::store::ConnectionKind::Oauth {
            return Err(format!(
                "connection {id} holds an API key; there is nothing to refresh"
            ));
        }
        self.refresher
            .refresh_by_admin(id, conn.secret_record.as_deref())
            .await
            .map_err(|e| e.to_string())
    }

    /// The live connection of the agent's user for `service` and its credential; refreshes an
    /// OAuth access token first when it is due. `None`: not connected.
    async fn credential(&self, p: &Principal, target: &Target) -> Option<Credential> {
        let cred = self.load_credential(p, target).await?;
        if cred.conn.kind == crate::store::ConnectionKind::Oauth
            && crate::lifecycle::Refresher::needs_refresh(
                &cred.conn,
                time::OffsetDateTime::now_utc(),
            )
        {
            // Whatever the refresh's outcome, read again: a revocation that landed meanwhile
            // must not be answered with the credential read before it.
            // Boxed, as every rare path here: a token request's state (some KiB) inline would
            // make every call's future that much bigger, and it is copied on every call.
            let _ = Box::pin(
                self.refresher
                    .refresh(&cred.conn.id, cred.conn.secret_record.as_deref()),
            )
            .await;
            return self.load_credential(p, target).await;
        }
        Some(cred)
    }

    /// From memory while no connection has changed since it was read (the store's
    /// connections generation), otherwise from the store and the vault.
    async fn load_credential(&self, p: &Principal, target: &Target) -> Option<Credential> {
        // Read before the store, so a write that lands after our read makes the copy stale.
        let generation = self.gateway.store.connections_generation();
        let cache = &target.credentials;
        if let Some(c) = cache.get(&self.gateway.store, &p.user.id, &target.name) {
            return Some(c);
        }
        let g = self.gateway.clone();
        let (uid, sname) = (p.user.id.clone(), target.name.to_string());
        let loaded = tokio::task::spawn_blocking(move || -> Option<Credential> {
            let c = g.live_connection(&uid, &sname).ok()??;
            if c.status != ConnectionStatus::Active && c.status != ConnectionStatus::Refreshing {
                return None;
            }
            let field = if c.kind == crate::store::ConnectionKind::ApiKey {
                "api_key"
            } else {
                ACCESS_FIELD
            };
            let record = c.secret_record.as_ref()?;
            let secret = g.vault.get(record, field).ok().flatten()?;
            // A DPoP-bound token goes out with a proof of its key or not at all: never as a
            // Bearer token (RFC 9449 §7.1).
            let dpop = match &c.dpop_jkt {
                None => None,
                Some(jkt) => {
                    let key = g
                        .vault
                        .get(record, crate::oauth::dpop::KEY_FIELD)
                        .ok()
                        .flatten()
                        .and_then(|k| DpopKey::from_pkcs8(k.expose_secret()).ok())
                        .filter(|k| k.thumbprint() == jkt);
                    let Some(key) = key else {
                        tracing::error!(connection = %c.id, "the tokens are DPoP-bound to a key the vault does not hold; the user must reconnect");
                        return None;
                    };
                    Some(Arc::new(key))
                }
            };
            Some(Credential {
                conn: Arc::new(c),
                secret: Arc::new(secret),
                dpop,
            })
        })
        .await
        .ok()
        .flatten()?;
        cache.put(p.user.id.clone(), generation, loaded.clone());
        Some(loaded)
    }

    /// One upstream request: allow-listed headers, then the user's credential (I13).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        svc: &crate::config::Service,
        target: &Target,
        method: &Method,
        headers: &HeaderMap,
        body: &Bytes,
        stateless: bool,
        credential: &Credential,
    ) -> Result<(hyper::Response<Incoming>, upstream::Lease), StatusCode> {
        let body = if method == Method::POST {
            body.clone()
        } else {
            Bytes::new()
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        let out = req.headers_mut();
        for (name, value) in headers {
            let n = name.as_str();
            // Mcp-Param-* mirror arguments the gateway does not check, so they stay here.
            if FORWARD_REQUEST.contains(&n) || (n == "mcp-session-id" && !stateless) {
                out.append(name.clone(), value.clone());
            }
        }
        let secret = credential.secret.expose_secret();
        match (&credential.dpop, &target.key_header) {
            // RFC 9449 §7.1: the DPoP scheme, with a proof bound to this request and token.
            (Some(key), _) => {
                let nonce = self.dpop_nonces.get(&svc.mcp_url);
                let proof = key
                    .proof(
                        method.as_str(),
                        &svc.mcp_url,
                        nonce.as_deref(),
                        Some(secret),
                    )
                    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
                out.insert(header::AUTHORIZATION, sensitive(b"DPoP ", secret)?);
                out.insert(
                    HeaderName::from_static("dpop"),
                    HeaderValue::from_str(&proof).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?,
                );
            }
            (None, Some(name)) => {
                out.insert(name.clone(), sensitive(b"", secret)?);
            }
            (None, None) => {
                out.insert(header::AUTHORIZATION, sensitive(b"Bearer ", secret)?);
            }
        }
        // Only the start of the answer is timed: a live SSE stream is never cut.
        let sent = upstream::send(&target.origin, req);
        match crate::coarse_timer::timeout(self.response_start_timeout, sent).await {
            Err(()) => Err(StatusCode::GATEWAY_TIMEOUT),
            Ok(Err(e)) => {
                // What went wrong on the way (refused, TLS, protocol), for the operator; no
                // credential is part of it. At most one line a second, however many calls fail.
                if let Some(suppressed) = UNREACHABLE_LOG.admit() {
                    tracing::warn!(
                        service = %target.name,
                        error = %Causes(&e),
                        suppressed,
                        "upstream unreachable"
                    );
                }
                Err(StatusCode::BAD_GATEWAY)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }
}

static UNREACHABLE_LOG: Throttle = Throttle::new();

/// One log line a second at most: `admit` says whether this one may go out, and how many were
/// held back since the last that did. For warnings that every failing call would repeat.
pub(crate) struct Throttle {
    /// The second (Unix time) of the last line let out, and the lines held back since.
    last: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    pub(crate) fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if now > last
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// An error and its causes, `outer: cause: root`: hyper's errors name only their own kind
/// ("client error (Connect)"), the reason (refused, a certificate) is further down.
struct Causes<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            // A wrapper that already prints its cause (`cannot connect: {0}`) is not repeated.
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = e.source();
        }
        Ok(())
    }
}

/// A credential header value (`scheme` + secret) marked sensitive: never shown when a request
/// is printed for debugging. The scratch copy is zeroized.
fn sensitive(scheme: &[u8], secret: &[u8]) -> Result<HeaderValue, StatusCode> {
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(scheme.len() + secret.len()));
    v.extend_from_slice(scheme);
    v.extend_from_slice(secret);
    let mut h = HeaderValue::from_bytes(&v).map_err(|_| StatusCode::BAD_GATEWAY)?;
    h.set_sensitive(true);
    Ok(h)
}

/// I7: no audit, no action.
fn audit_unavailable() -> Response {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be written; calls are refused\n",
    )
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn unauthorized() -> Response {
    // No detail for unknown, malformed or revoked agents alike (I11).
    let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The request headers the proxy reads, found in one pass over them (not one hashed lookup
/// each): the first value of each, as `HeaderMap::get` gives it.
#[derive(Default)]
struct AgentHeaders<'a> {
    content_length: Option<&'a HeaderValue>,
    origin: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    protocol_version: Option<&'a HeaderValue>,
    method: Option<&'a HeaderValue>,
    name: Option<&'a HeaderValue>,
    session: Option<&'a HeaderValue>,
}

impl<'a> AgentHeaders<'a> {
    fn read(headers: &'a HeaderMap) -> Self {
        let mut h = Self::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "content-length" => &mut h.content_length,
                "origin" => &mut h.origin,
                "authorization" => &mut h.authorization,
                "mcp-protocol-version" => &mut h.protocol_version,
                "mcp-method" => &mut h.method,
                "mcp-name" => &mut h.name,
                "mcp-session-id" => &mut h.session,
                _ => continue,
            };
            // A name's values come together, its first first.
            slot.get_or_insert(value);
        }
        h
    }
}

fn text(v: Option<&HeaderValue>) -> Option<&str> {
    v.and_then(|v| v.to_str().ok())
}

fn bearer(authorization: Option<&HeaderValue>) -> Option<&[u8]> {
    let v = authorization?.as_bytes();
    let rest = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))?;
    Some(rest.trim_ascii())
}

/// The request body, up to `max` bytes however it is sent (413 above it, before anything of
/// it is forwarded).
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Response> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(plain(
            StatusCode::BAD_REQUEST,
            "cannot read the request body\n",
        )),
    }
}

fn too_large() -> Response {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
}

/// `/mcp/{service}`, called by the listener directly: no router or middleware on the hot path.
pub async fn handle(proxy: Arc<Proxy>, service: &str, req: Request<Incoming>) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let (method, headers) = (parts.method, parts.headers);
    let max_body = proxy.gateway.config.limits.max_body_bytes;
    let agent_headers = AgentHeaders::read(&headers);
    // A declared length over the limit is refused before a byte of the body is read.
    if text(agent_headers.content_length)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max_body as u64)
    {
        return too_large();
    }
    // DNS-rebinding defence: a browser page from another origin gets 403.
    if let Some(origin) = text(agent_headers.origin)
        && origin != proxy.public_origin
    {
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if !matches!(method, Method::POST | Method::GET | Method::DELETE) {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "MCP uses POST, GET and DELETE\n",
        );
    }
    let Some(token) = bearer(agent_headers.authorization) else {
        return unauthorized();
    };
    let principal = match proxy.gateway.cached_principal(token) {
        Some(p) => p,
        None => {
            let g = proxy.gateway.clone();
            let t = zeroize::Zeroizing::new(token.to_vec());
            match tokio::task::spawn_blocking(move || g.authenticate_agent(&t)).await {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return unauthorized(),
                _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
            }
        }
    };
    let Some(slot) = StreamSlot::take(
        &principal.in_flight,
        proxy.gateway.config.limits.max_streams_per_agent,
    ) else {
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many concurrent requests for this agent\n",
        );
    };
    let Some(target) = proxy.targets.get(service) else {
        return plain(StatusCode::NOT_FOUND, "no such service\n");
    };
    let svc = &target.svc;
    if !proxy.audit.healthy() {
        return audit_unavailable();
    }
    let version = text(agent_headers.protocol_version).unwrap_or("");
    let stateless = !version.is_empty() && version >= STATELESS_REVISION;
    if method != Method::POST && stateless {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "stateless MCP uses POST only\n",
        );
    }
    let body = if method == Method::POST {
        match read_body(body, max_body).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Bytes::new()
    };
    let message = if method == Method::POST {
        match jsonrpc::inspect(&body) {
            Ok(m) => Some(m),
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    jsonrpc::error(&Value::Null, -32600, &e.to_string(), None),
                );
            }
        }
    } else {
        None
    };
    let id = match &message {
        Some(Message::Request { id, .. }) => id.clone(),
        _ => Value::Null,
    };
    // 2026-07-28: Mcp-Method / Mcp-Name must match the body (SEP-2243).
    // Checked whenever present (and required when stateless), so an upstream that routes on
    // these headers cannot be told something the body does not say.
    if let Some(m) = &message {
        let header_method = text(agent_headers.method);
        let header_name = text(agent_headers.name);
        let body_name = match m {
            Message::Request { target, .. } => target.as_deref(),
            _ => None,
        };
        let method_bad = header_method != m.method() && (stateless || header_method.is_some());
        let name_bad = header_name != body_name
            && (header_name.is_some() || (stateless && body_name.is_some()));
        if method_bad || name_bad {
            return json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error(
                    &id,
                    HEADER_MISMATCH,
                    "Mcp-Method / Mcp-Name headers do not match the body",
                    None,
                ),
            );
        }
    }
    let tool = match &message {
        Some(Message::Request {
            method,
            target: Some(t),
            ..
        }) if method == "tools/call" => Some(t.clone()),
        _ => None,
    };
    // Every outcome of this call is audited alike: who, what, how it ended (never arguments).
    let event = |outcome: Cow<'static, str>, connection: Option<&Arc<Connection>>| CallRecord {
        principal: principal.clone(),
        service: target.name.clone(),
        // Cut to the audit field's cap now: a queued record holds no more than its entry says.
        method: message
            .as_ref()
            .and_then(Message::method)
            .map(|m| cap_untrusted(m).to_owned()),
        tool: tool.as_deref().map(|t| cap_untrusted(t).to_owned()),
        outcome,
        micros: started.elapsed().as_micros() as u64,
        connection: connection.cloned(),
    };
    let decision = match &tool {
        Some(t) => policy::tool_allowed(principal.profile.as_ref(), service, t),
        None => policy::service_allowed(principal.profile.as_ref(), service),
    };
    if let Decision::Deny(reason) = decision {
        // I12: answered here; nothing reaches upstream.
        if !proxy.audit.record(event("denied".into(), None)) {
            return audit_unavailable();
        }
        return json_response(
            StatusCode::OK,
            jsonrpc::error(&id, NOT_PERMITTED, &reason, None),
        );
    }
    // I14: a session id is only usable by the agent that opened it (and is never auth).
    let session = text(agent_headers.session);
    if !stateless && let Some(sid) = &session {
        let owner = proxy
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.owner(service, sid).cloned());
        if owner.as_deref() != Some(principal.agent.id.as_str()) {
            return plain(StatusCode::NOT_FOUND, "session not found\n");
        }
    }
    // The user's credential for the service, refreshed first when it is about to expire.
    let mut cred = match proxy.credential(&principal, target).await {
        Some(c) => c,
        None => {
            let _ = proxy.audit.record(event("needs_connection".into(), None));
            return reconnect_answer(&proxy, service, &id, message.as_ref(), version);
        }
    };
    let mut retried = false;
    let mut nonce_retried = false;
    let (resp, lease) = loop {
        let (resp, lease) = match proxy
            .forward(svc, target, &method, &headers, &body, stateless, &cred)
            .await
        {
            Ok(r) => r,
            Err(status) => {
                let outcome = if status == StatusCode::GATEWAY_TIMEOUT {
                    "upstream_timeout"
                } else {
                    "upstream_unreachable"
                };
                let _ = proxy.audit.record(event(outcome.into(), None));
                return plain(
                    status,
                    if status == StatusCode::GATEWAY_TIMEOUT {
                        "upstream did not answer in time\n"
                    } else {
                        "upstream unreachable\n"
                    },
                );
            }
        };
        if cred.dpop.is_some() {
            let fresh = proxy.dpop_nonces.remember(&svc.mcp_url, resp.headers());
            let status = resp.status().as_u16();
            // RFC 9449 §9: the resource server wants a (newer) nonce and gave one. One retry
            // with it; no refresh, since the token is fine.
            if fresh
                && !nonce_retried
                && crate::oauth::dpop::resource_wants_nonce(status, resp.headers())
            {
                nonce_retried = true;
                continue;
            }
            // A proof problem is not the token's: a refresh would not help.
            if crate::oauth::dpop::proof_rejected(status, resp.headers()) {
                break (resp, lease);
            }
        }
        // An upstream 401 on an OAuth connection: one refresh and one retry, never a loop.
        if resp.status() == StatusCode::UNAUTHORIZED
            && !retried
            && cred.conn.kind == crate::store::ConnectionKind::Oauth
        {
            retried = true;
            if Box::pin(
                proxy
                    .refresher
                    .refresh_after_401(&cred.conn.id, cred.conn.secret_record.as_deref()),
            )
            .await
            .is_ok()
                && let Some(c) = Box::pin(proxy.credential(&principal, target)).await
            {
                cred = c;
                continue;
            }
        }
        break (resp, lease);
    };
    let status = resp.status();
    let outcome: Cow<'static, str> = if status.is_success() || status == StatusCode::ACCEPTED {
        "ok".into()
    } else {
        format!("upstream_{}", status.as_u16()).into()
    };
    // The connection id lets the scope audit attribute exercised scopes (no extra write).
    let audit_call =
        |outcome: Cow<'static, str>| proxy.audit.record(event(outcome, Some(&cred.conn)));
    let filter_tools = matches!(&message, Some(Message::Request { method, .. }) if method == "tools/list")
        && principal.profile.is_some();
    // A filtered tools/list is recorded once its answer is in (it can still fail or time out).
    let deferred = filter_tools && outcome == "ok";
    if !deferred && !audit_call(outcome.clone()) {
        return audit_unavailable();
    }
    if status == StatusCode::UNAUTHORIZED {
        // Still refused after the one refresh (and, with DPoP, the one nonce retry). Upstream's
        // own WWW-Authenticate is not the agent's business; say what to do.
        let text = if cred.dpop.is_some() && crate::oauth::dpop::proof_rejected(401, resp.headers())
        {
            format!("{service} did not accept the gateway's DPoP proof; try again later")
        } else {
            format!(
                "{service} refused the stored credential; reconnect at {}",
                proxy.connect_url
            )
        };
        return json_response(
            StatusCode::BAD_GATEWAY,
            jsonrpc::error(&id, -32001, &text, None),
        );
    }
    // The answer's head, built in place (a `Response::builder` moves its parts on every call).
    let mut out = Response::new(Body::empty());
    *out.status_mut() = status;
    let head = out.headers_mut();
    let mut is_sse = false;
    let (mut upstream_session, mut length) = (None, None);
    // One pass over upstream's headers; of each forwarded one, its first value (as `get`).
    for (name, v) in resp.headers() {
        if name == header::CONTENT_LENGTH {
            length.get_or_insert(v);
            continue;
        }
        if !FORWARD_RESPONSE.contains(name) || head.contains_key(name) {
            continue;
        }
        if name == header::CONTENT_TYPE
            && v.to_str().is_ok_and(|s| s.starts_with("text/event-stream"))
        {
            is_sse = true;
        }
        if name == MCP_SESSION_ID {
            upstream_session = v.to_str().ok();
        }
        head.insert(name, v.clone());
    }
    if let Some(sid) = upstream_session
        && !stateless
        && let Ok(mut m) = proxy.sessions.lock()
    {
        m.bind(service, sid, &principal.agent.id);
    }
    if method == Method::DELETE
        && status.is_success()
        && let (Some(sid), Ok(mut m)) = (&session, proxy.sessions.lock())
    {
        m.unbind(service, sid);
    }
    if is_sse {
        head.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    if filter_tools {
        // Filtering needs the whole (small) answer; everything else streams.
        let mut buf = Vec::new();
        let mut stream = resp.into_body();
        let deadline = tokio::time::Instant::now() + proxy.response_start_timeout;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.frame()).await {
                Err(_) => {
                    let _ = deferred && audit_call("upstream_timeout".into());
                    return plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream did not finish its tools/list answer in time\n",
                    );
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    let _ = deferred && audit_call("upstream_stream_failed".into());
                    return plain(StatusCode::BAD_GATEWAY, "upstream stream failed\n");
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers
                },
            };
            if buf.len() + chunk.len() > TOOLS_LIST_CAP {
                let _ = deferred && audit_call("upstream_too_large".into());
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "upstream tools/list answer too large\n",
                );
            }
            buf.extend_from_slice(&chunk);
        }
        if deferred && !audit_call("ok".into()) {
            return audit_unavailable();
        }
        let filtered = filter_tools_list(&buf, is_sse, principal.profile.as_ref(), service);
        *out.body_mut() = Body::from(filtered);
        return out;
    }
    // Passed through unchanged, the body keeps upstream's length: no re-chunking.
    if let Some(len) = length {
        out.headers_mut()
            .insert(header::CONTENT_LENGTH, len.clone());
    }
    // The slot travels with the body: it is released when the stream ends or is dropped.
    // So does the upstream connection: back in the pool once the answer has been relayed.
    let body = upstream::Relay::new(resp.into_body(), proxy.stream_idle, (slot, lease));
    *out.body_mut() = Body::new(body);
    out
}

/// "Connect your account", the spec's way for each era, naming the service and where the user
/// reconnects (no credential and nothing pre-authenticated in the URL): an
/// `InputRequiredResult` carrying a URL-mode elicitation for 2026-07-28 clients (SEP-2322),
/// the `-32042` URL-elicitation-required error for 2025-11-25 clients, and a tool error with
/// the same text for older ones.
fn reconnect_answer(
    proxy: &Proxy,
    service: &str,
    id: &Value,
    m: Option<&Message>,
    version: &str,
) -> Response {
    let message = format!(
        "Connect your {service} account at {} to continue.",
        proxy.connect_url
    );
    let Some(Message::Request { method, .. }) = m else {
        return plain(StatusCode::CONFLICT, "the service is not connected\n");
    };
    let elicitation = json!({"mode": "url", "message": message, "url": proxy.connect_url});
    if version >= STATELESS_REVISION {
        let result = json!({
            "resultType": "input_required",
            "inputRequests": {"connect": {"method": "elicitation/create", "params": elicitation}},
            "requestState": format!("scopegate-connect:{service}"),
        });
        return json_response(
            StatusCode::OK,
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
                .unwrap_or_default(),
        );
    }
    if version >= "2025-11-25" || method != "tools/call" {
        let mut e = elicitation;
        e["elicitationId"] = Value::String(uuid::Uuid::new_v4().to_string());
        let data = json!({"elicitations": [e]});
        return json_response(
            StatusCode::OK,
            jsonrpc::error(id, URL_ELICITATION_REQUIRED, &message, Some(data)),
        );
    }
    let result = json!({"content": [{"type": "text", "text": message}], "isError": true});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
            .unwrap_or_default(),
    )
}

/// Drops tools the profile does not allow from a `tools/list` result (JSON or SSE).
fn filter_tools_list(
    body: &[u8],
    sse: bool,
    profile: Option<&crate::store::Profile>,
    service: &str,
) -> Vec<u8> {
    let filter_json = |v: &mut Value| {
        if let Some(tools) = v
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        {
            tools.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| policy::tool_allowed(profile, service, n) == Decision::Allow)
            });
        }
    };
    if !sse {
        return match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                filter_json(&mut v);
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some(data) = line.strip_prefix("data:") else {
            out.push_str(line);
            continue;
        };
        // Fail closed: a data line we cannot read could list hidden tools, so it is dropped.
        if let Ok(mut v) = serde_json::from_str::<Value>(data.trim()) {
            filter_json(&mut v);
            out.push_str("data: ");
            out.push_str(&v.to_string());
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Header names forwarded from the agent, for tests of I13.
pub fn forwarded_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    FORWARD_REQUEST.contains(&n) || n == "mcp-session-id"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// One pass finds what `HeaderMap::get` would: the first value of each header read,
    /// whatever the case it was sent in; others are not picked up.
    #[test]
    fn agent_headers_are_read_as_get_reads_them() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("Authorization", "Bearer first"),
            ("x-other", "1"),
            ("authorization", "Bearer second"),
            ("MCP-Method", "tools/call"),
            ("mcp-name", "a"),
            ("Mcp-Name", "b"),
            ("mcp-session-id", "s1"),
            ("Origin", "http://o"),
            ("content-length", "12"),
            ("mcp-protocol-version", "2025-11-25"),
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let a = AgentHeaders::read(&h);
        for (got, name) in [
            (a.authorization, "authorization"),
            (a.method, "mcp-method"),
            (a.name, "mcp-name"),
            (a.session, "mcp-session-id"),
            (a.origin, "origin"),
            (a.content_length, "content-length"),
            (a.protocol_version, "mcp-protocol-version"),
        ] {
            assert_eq!(got, h.get(name), "{name}");
        }
        assert_eq!(bearer(a.authorization), Some(&b"first"[..]));
        let empty = HeaderMap::new();
        let none = AgentHeaders::read(&empty);
        assert!(none.authorization.is_none() && none.session.is_none() && none.method.is_none());
    }

    /// Every call's future is built on the stack and then boxed (hyper's service, our
    /// listener), so its whole size is copied per call, however little of it the call uses:
    /// the rare paths (a connection's setup, a token refresh) stay boxed, out of it.
    #[test]
    fn a_call_future_stays_small() {
        let size = future_size::<Arc<Proxy>, &'static str, Request<Incoming>, _>(handle);
        assert!(size < 4096, "a call's future is {size} bytes");
    }

    /// The operator's line names the reason below hyper's own words, once each.
    #[tokio::test]
    async fn an_unreachable_upstream_is_logged_with_its_causes() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let origin =
            upstream::Origin::new(format!("http://127.0.0.1:{port}/mcp").parse().unwrap()).unwrap();
        let req = Request::new(http_body_util::Full::new(axum::body::Bytes::new()));
        let Err(e) = upstream::send(&origin, req).await else {
            panic!("nothing listens there")
        };
        let shown = Causes(&e).to_string();
        assert!(shown.starts_with("cannot connect: "), "{shown}");
        assert!(shown.to_lowercase().contains("refused"), "{shown}");
        let once = shown.split(": ").collect::<Vec<_>>();
        let mut dedup = once.clone();
        dedup.dedup();
        assert_eq!(once, dedup, "a cause repeated: {shown}");
    }

    #[test]
    fn the_throttle_lets_one_line_a_second_out_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.admit(), Some(0));
        let mut out = 0;
        for _ in 0..5 {
            out += usize::from(t.admit().is_some());
        }
        // The second may have turned once meanwhile, not more.
        assert!(out <= 1, "{out} lines let out in the same second");
        if out == 0 {
            t.last.store(0, Ordering::Relaxed);
            assert_eq!(t.admit(), Some(5), "the five held back are counted");
        }
    }
}
