//! `scopegate.toml`: parsed once into `RawConfig` (serde, unknown keys are errors), then
//! checked into `Config`, with errors that name the file and the key. Holds no secret values:
//! client secrets are named by `*_env` / `*_file` and read when used.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::{Host, Url};

/// A config error, already naming the file; `Display` is the whole message.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    upstream_response_timeout_secs: Option<u64>,
    stream_idle_timeout_secs: Option<u64>,
    max_streams_per_agent: Option<usize>,
    refresh_concurrency_per_provider: Option<usize>,
    refresh_startup_spread_secs: Option<u64>,
    proactive_refresh: Option<bool>,
    strike_interval_secs: Option<u64>,
    listener_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    preset: Option<String>,
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    /// Present only so that a pasted secret gets a clear error instead of "unknown field".
    client_secret: Option<toml::Value>,
    tenant: Option<String>,
    dpop: Option<bool>,
    /// GitHub / Slack webhook signing secret, named like the client secret (never the value).
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    /// Present only so that a pasted secret gets a clear error instead of "unknown field".
    webhook_secret: Option<toml::Value>,
    /// Security Event Token receiver (RFC 8417/8935) at `/webhooks/risc/{provider}`.
    risc_jwks_uri: Option<String>,
    risc_issuer: Option<String>,
    risc_audience: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    kind: Option<String>,
    provider: Option<String>,
    mcp_url: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    resource: Option<String>,
    #[serde(default)]
    tools: BTreeMap<String, Vec<String>>,
    tool_map: Option<String>,
    header: Option<String>,
    rotate_after_days: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: Url,
    pub limits: Limits,
    pub providers: BTreeMap<String, Provider>,
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// How long an upstream may take to start answering (504 after); a started stream is
    /// not cut.
    pub upstream_response_timeout_secs: u64,
    /// A stream from upstream silent for this long is cut (heartbeats keep it alive).
    pub stream_idle_timeout_secs: u64,
    /// Concurrent proxied requests (open streams included) per agent; more get 429.
    pub max_streams_per_agent: usize,
    /// Scheduled token requests in flight per provider (eight times this overall).
    pub refresh_concurrency_per_provider: usize,
    /// Refreshes overdue at start-up are spread over this many seconds.
    pub refresh_startup_spread_secs: u64,
    /// Refresh ahead of use (at 80% of lifetime); off leaves only on-demand refresh.
    pub proactive_refresh: bool,
    /// Definitive refresh rejections are retried this far apart (times the strike count), so
    /// a passing misconfiguration (a client secret mid-rotation) cannot use up three at once.
    pub strike_interval_secs: u64,
    /// Threads serving HTTP, each with its own event loop; 0: one per CPU core.
    pub listener_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout_secs: 10,
            shutdown_grace_secs: 10,
            upstream_response_timeout_secs: 30,
            stream_idle_timeout_secs: 300,
            max_streams_per_agent: 32,
            refresh_concurrency_per_provider: 8,
            refresh_startup_spread_secs: 30,
            proactive_refresh: true,
            strike_interval_secs: 300,
            listener_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Google,
    Github,
    GithubApp,
    Slack,
    Microsoft,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEndpoints {
    Preset(Preset),
    /// RFC 8414 metadata, then OIDC discovery, from this issuer.
    Issuer(Url),
    Explicit {
        authorization: Url,
        token: Url,
        revocation: Option<Url>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecretSource {
    None,
    Env(String),
    File(PathBuf),
    /// Made up at start by `serve --dev` for its built-in demo provider; never from a file.
    Generated(crate::secret::ClientSecret),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub endpoints: ProviderEndpoints,
    pub client_id: String,
    pub client_secret: ClientSecretSource,
    pub tenant: Option<String>,
    /// DPoP (RFC 9449): `Some(true)` always, `Some(false)` never, `None` when the server
    /// advertises ES256 in `dpop_signing_alg_values_supported`.
    pub dpop: Option<bool>,
    /// The signing secret of the provider's webhooks (GitHub, Slack); `None` when unset.
    pub webhook_secret: ClientSecretSource,
    /// Where Security Event Tokens for this provider are verified, when it sends them.
    pub risc: Option<RiscReceiver>,
}

/// How `/webhooks/risc/{provider}` checks a Security Event Token (RFC 8417 §2, RFC 8935 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiscReceiver {
    pub jwks_uri: Url,
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// `aud` must name one of these (Google: the project's client ids).
    pub audiences: Vec<String>,
}

/// Google's Cross-Account Protection (https://accounts.google.com/.well-known/risc-configuration).
pub const GOOGLE_RISC_ISSUER: &str = "https://accounts.google.com/";
pub const GOOGLE_RISC_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

impl ClientSecretSource {
    /// Reads the secret from the env var or file named in the config, at the moment of use.
    /// Errors name the provider and the source, never the value.
    pub fn read(&self, provider: &str) -> Result<Option<crate::secret::ClientSecret>, String> {
        use crate::secret::ClientSecret;
        match self {
            Self::None => Ok(None),
            Self::Generated(s) => Ok(Some(s.clone())),
            Self::Env(var) => std::env::var(var)
                .map(|v| Some(ClientSecret::new(v.into_bytes())))
                .map_err(|_| format!("provider {provider}: environment variable {var} is not set")),
            Self::File(path) => {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    format!("provider {provider}: cannot read {}: {e}", path.display())
                })?;
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                Ok(Some(ClientSecret::new(bytes)))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    Oauth {
        provider: String,
        scopes: Vec<String>,
        resource: Option<Url>,
    },
    ApiKey {
        header: String,
        rotate_after_days: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    pub mcp_url: Url,
    pub tools: BTreeMap<String, Vec<String>>,
}

impl Service {
    pub fn is_api_key(&self) -> bool {
        matches!(self.kind, ServiceKind::ApiKey { .. })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(toml_message(&e)))?;
        check(raw).map_err(err)
    }
}

/// toml's message names the key and the line; keep it on one line for stderr.
fn toml_message(e: &toml::de::Error) -> String {
    let mut msg = e.message().trim().to_owned();
    if let Some(span) = e.span() {
        msg = format!("at byte {}: {msg}", span.start);
    }
    msg.replace('\n', " ")
}

fn check(raw: RawConfig) -> Result<Config, String> {
    let listen: SocketAddr = raw
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8080")
        .parse()
        .map_err(|e| format!("listen: not an address:port ({e})"))?;
    let public_url = match raw.public_url.as_deref() {
        Some(u) => url_field("public_url", u)?,
        None => Url::parse(&format!("http://{listen}")).map_err(|e| format!("public_url: {e}"))?,
    };
    let d = Limits::default();
    let l = raw.limits;
    let limits = Limits {
        max_connections: positive(
            "limits.max_connections",
            l.max_connections,
            d.max_connections,
        )?,
        max_body_bytes: positive("limits.max_body_bytes", l.max_body_bytes, d.max_body_bytes)?,
        max_header_bytes: positive(
            "limits.max_header_bytes",
            l.max_header_bytes,
            d.max_header_bytes,
        )?
        .max(8192),
        header_read_timeout_secs: positive(
            "limits.header_read_timeout_secs",
            l.header_read_timeout_secs,
            d.header_read_timeout_secs,
        )?,
        shutdown_grace_secs: l.shutdown_grace_secs.unwrap_or(d.shutdown_grace_secs),
        upstream_response_timeout_secs: positive(
            "limits.upstream_response_timeout_secs",
            l.upstream_response_timeout_secs,
            d.upstream_response_timeout_secs,
        )?,
        max_streams_per_agent: positive(
            "limits.max_streams_per_agent",
            l.max_streams_per_agent,
            d.max_streams_per_agent,
        )?,
        stream_idle_timeout_secs: positive(
            "limits.stream_idle_timeout_secs",
            l.stream_idle_timeout_secs,
            d.stream_idle_timeout_secs,
        )?,
        refresh_concurrency_per_provider: positive(
            "limits.refresh_concurrency_per_provider",
            l.refresh_concurrency_per_provider,
            d.refresh_concurrency_per_provider,
        )?,
        refresh_startup_spread_secs: l
            .refresh_startup_spread_secs
            .unwrap_or(d.refresh_startup_spread_secs),
        proactive_refresh: l.proactive_refresh.unwrap_or(d.proactive_refresh),
        strike_interval_secs: positive(
            "limits.strike_interval_secs",
            l.strike_interval_secs,
            d.strike_interval_secs,
        )?,
        listener_threads: l.listener_threads.unwrap_or(d.listener_threads).min(256),
    };
    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        check_name("providers", &name)?;
        providers.insert(name.clone(), check_provider(&name, p)?);
    }
    let mut services = BTreeMap::new();
    for (name, s) in raw.services {
        check_name("services", &name)?;
        let svc = check_service(&name, s, &providers)?;
        services.insert(name, svc);
    }
    Ok(Config {
        listen,
        public_url,
        limits,
        providers,
        services,
    })
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    key: &str,
    v: Option<T>,
    default: T,
) -> Result<T, String> {
    match v {
        Some(v) if v <= T::default() => Err(format!("{key}: must be greater than zero, got {v}")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// Names become URL path segments (`/mcp/{service}`) and vault record names.
fn check_name(section: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{section}.{name}: names may use only letters, digits, '-' and '_' (at most 64)"
        ))
    }
}

/// `http://` only for loopback hosts; anything else must be https.
fn url_field(key: &str, value: &str) -> Result<Url, String> {
    let u = Url::parse(value).map_err(|e| format!("{key}: not a URL ({e})"))?;
    match u.scheme() {
        "https" => {}
        "http" if is_loopback(&u) => {}
        "http" => {
            return Err(format!(
                "{key}: http:// is allowed only for loopback hosts; use https://"
            ));
        }
        other => return Err(format!("{key}: unsupported scheme {other}://")),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{key}: credentials in URLs are not allowed"));
    }
    if u.fragment().is_some() {
        return Err(format!("{key}: must not have a #fragment"));
    }
    Ok(u)
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn check_provider(name: &str, p: RawProvider) -> Result<Provider, String> {
    let key = |k: &str| format!("providers.{name}.{k}");
    if p.client_secret.is_some() {
        return Err(format!(
            "{}: secret values may not be written in the config; use client_secret_env or client_secret_file",
            key("client_secret")
        ));
    }
    let client_id = p
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{}: missing", key("client_id")))?;
    let client_secret = secret_source(
        name,
        "client_secret",
        p.client_secret_env,
        p.client_secret_file,
    )?;
    let explicit = p.authorization_endpoint.is_some() || p.token_endpoint.is_some();
    let endpoints = match (p.preset.as_deref(), p.issuer.as_deref(), explicit) {
        (Some(preset), None, false) => ProviderEndpoints::Preset(match preset {
            "google" => Preset::Google,
            "github" => Preset::Github,
            "github-app" => Preset::GithubApp,
            "slack" => Preset::Slack,
            "microsoft" => Preset::Microsoft,
            other => {
                return Err(format!(
                    "{}: unknown preset {other:?} (google, github, github-app, slack, microsoft)",
                    key("preset")
                ));
            }
        }),
        (None, Some(issuer), false) => {
            ProviderEndpoints::Issuer(url_field(&key("issuer"), issuer)?)
        }
        (None, None, true) => ProviderEndpoints::Explicit {
            authorization: url_field(
                &key("authorization_endpoint"),
                p.authorization_endpoint
                    .as_deref()
                    .ok_or_else(|| format!("{}: missing", key("authorization_endpoint")))?,
            )?,
            token: url_field(
                &key("token_endpoint"),
                p.token_endpoint
                    .as_deref()
                    .ok_or_else(|| format!("{}: missing", key("token_endpoint")))?,
            )?,
            revocation: p
                .revocation_endpoint
                .as_deref()
                .map(|u| url_field(&key("revocation_endpoint"), u))
                .transpose()?,
        },
        (None, None, false) => {
            return Err(format!(
                "providers.{name}: set one of preset, issuer, or authorization_endpoint + token_endpoint"
            ));
        }
        _ => {
            return Err(format!(
                "providers.{name}: preset, issuer and explicit endpoints are mutually exclusive"
            ));
        }
    };
    if p.tenant.is_some() && endpoints != ProviderEndpoints::Preset(Preset::Microsoft) {
        return Err(format!(
            "{}: only the microsoft preset takes a tenant",
            key("tenant")
        ));
    }
    if p.webhook_secret.is_some() {
        return Err(format!(
            "{}: secret values may not be written in the config; use webhook_secret_env or webhook_secret_file",
            key("webhook_secret")
        ));
    }
    let webhook_secret = secret_source(
        name,
        "webhook_secret",
        p.webhook_secret_env,
        p.webhook_secret_file,
    )?;
    let signs_webhooks = matches!(
        endpoints,
        ProviderEndpoints::Preset(Preset::Github | Preset::GithubApp | Preset::Slack)
    );
    if webhook_secret != ClientSecretSource::None && !signs_webhooks {
        return Err(format!(
            "providers.{name}: webhook_secret_env/webhook_secret_file apply only to the github, github-app and slack presets"
        ));
    }
    let risc = check_risc(
        name,
        &p.risc_jwks_uri,
        &p.risc_issuer,
        p.risc_audience,
        &endpoints,
        &client_id,
    )?;
    Ok(Provider {
        endpoints,
        client_id,
        client_secret,
        tenant: p.tenant,
        dpop: p.dpop,
        webhook_secret,
        risc,
    })
}

/// `{what}_env` or `{what}_file`: where a secret is read from, never the secret itself.
fn secret_source(
    provider: &str,
    what: &str,
    env: Option<String>,
    file: Option<PathBuf>,
) -> Result<ClientSecretSource, String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(format!(
            "providers.{provider}: set {what}_env or {what}_file, not both"
        )),
        (Some(env), None) if env.is_empty() => {
            Err(format!("providers.{provider}.{what}_env: empty"))
        }
        (Some(env), None) => Ok(ClientSecretSource::Env(env)),
        (None, Some(f)) => Ok(ClientSecretSource::File(f)),
        (None, None) => Ok(ClientSecretSource::None),
    }
}

/// The google preset receives Google's SETs by default; any other provider names its JWKS and
/// issuer. The audience defaults to the client id (Google puts a client id in `aud`).
fn check_risc(
    name: &str,
    jwks_uri: &Option<String>,
    issuer: &Option<String>,
    audience: Option<Vec<String>>,
    endpoints: &ProviderEndpoints,
    client_id: &str,
) -> Result<Option<RiscReceiver>, String> {
    let key = |k: &str| format!("providers.{name}.{k}");
    let google = *endpoints == ProviderEndpoints::Preset(Preset::Google);
    let (jwks_uri, issuer) = match (jwks_uri.as_deref(), issuer.as_deref()) {
        (Some(j), Some(i)) => (url_field(&key("risc_jwks_uri"), j)?, i.to_owned()),
        (None, None) if google => (
            url_field(&key("risc_jwks_uri"), GOOGLE_RISC_JWKS)?,
            GOOGLE_RISC_ISSUER.to_owned(),
        ),
        (None, None) if audience.is_none() => return Ok(None),
        (None, None) | (Some(_), None) => return Err(format!("{}: missing", key("risc_issuer"))),
        (None, Some(_)) => return Err(format!("{}: missing", key("risc_jwks_uri"))),
    };
    if issuer.is_empty() {
        return Err(format!("{}: empty", key("risc_issuer")));
    }
    let audiences = audience.unwrap_or_else(|| vec![client_id.to_owned()]);
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(format!(
            "{}: needs at least one non-empty value",
            key("risc_audience")
        ));
    }
    Ok(Some(RiscReceiver {
        jwks_uri,
        issuer,
        audiences,
    }))
}

fn check_service(
    name: &str,
    s: RawService,
    providers: &BTreeMap<String, Provider>,
) -> Result<Service, String> {
    let key = |k: &str| format!("services.{name}.{k}");
    let mcp_url = url_field(
        &key("mcp_url"),
        s.mcp_url
            .as_deref()
            .ok_or_else(|| format!("{}: missing", key("mcp_url")))?,
    )?;
    let kind = match s.kind.as_deref().unwrap_or("oauth") {
        "oauth" => {
            if s.header.is_some() || s.rotate_after_days.is_some() {
                return Err(format!(
                    "services.{name}: header and rotate_after_days apply only to kind = \"api_key\""
                ));
            }
            let provider = s.provider.ok_or_else(|| {
                format!("{}: missing (or set kind = \"api_key\")", key("provider"))
            })?;
            let p = providers.get(&provider).ok_or_else(|| {
                format!(
                    "{}: no provider named {provider:?} in [providers]",
                    key("provider")
                )
            })?;
            let resource = s
                .resource
                .as_deref()
                .map(|r| url_field(&key("resource"), r))
                .transpose()?;
            if resource.is_some() && p.endpoints == ProviderEndpoints::Preset(Preset::Microsoft) {
                // Entra v2 rejects `resource` together with `scope` (AADSTS9010010).
                return Err(format!(
                    "{}: Microsoft Entra rejects the RFC 8707 resource parameter",
                    key("resource")
                ));
            }
            ServiceKind::Oauth {
                provider,
                scopes: s.scopes,
                resource,
            }
        }
        "api_key" => {
            if s.provider.is_some() || s.resource.is_some() || !s.scopes.is_empty() {
                return Err(format!(
                    "services.{name}: provider, scopes and resource do not apply to kind = \"api_key\""
                ));
            }
            let header = s.header.unwrap_or_else(|| "Authorization".to_owned());
            let valid = !header.is_empty()
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(format!("{}: not a valid HTTP header name", key("header")));
            }
            if s.rotate_after_days == Some(0) {
                return Err(format!("{}: must be at least 1", key("rotate_after_days")));
            }
            ServiceKind::ApiKey {
                header,
                rotate_after_days: s.rotate_after_days,
            }
        }
        other => {
            return Err(format!(
                "{}: unknown kind {other:?} (oauth, api_key)",
                key("kind")
            ));
        }
    };
    // A built-in tool map (named, or known by the hosted server's URL) underlies the
    // configured one: `[services.X.tools]` entries add tools or override the built-in scopes.
    let builtin = match s.tool_map.as_deref() {
        Some("none") => None,
        Some(n) => Some(crate::scopes::builtin::by_name(n).ok_or_else(|| {
            format!(
                "{}: unknown tool map {n:?} (built in: {}; or \"none\")",
                key("tool_map"),
                crate::scopes::builtin::names()
            )
        })?),
        None => crate::scopes::builtin::for_url(&mcp_url).and_then(crate::scopes::builtin::by_name),
    };
    let mut tools: BTreeMap<String, Vec<String>> = builtin
        .unwrap_or_default()
        .iter()
        .map(|(t, scopes)| {
            (
                (*t).to_owned(),
                scopes.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect();
    tools.extend(s.tools);
    Ok(Service {
        name: name.to_owned(),
        kind,
        mcp_url,
        tools,
    })
}

/// The starter config written by `scopegate init`.
pub const STARTER: &str = r#"# Scopegate configuration. Secret values never go in this file: name them with
# client_secret_env / client_secret_file. Unknown keys are errors.

listen     = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"   # redirect URIs are built from this, nothing else

# [limits]
# max_connections          = 1024
# max_body_bytes           = 1048576
# max_header_bytes         = 16384
# header_read_timeout_secs = 10
# shutdown_grace_secs      = 10
# listener_threads         = 0         # HTTP threads, each its own event loop; 0: one per core

# [providers.google]
# preset            = "google"          # google | github | github-app | slack | microsoft
# client_id         = "1234.apps.googleusercontent.com"
# client_secret_env = "GOOGLE_CLIENT_SECRET"

# [providers.corp]                      # any OAuth 2.0 / OIDC server
# issuer            = "https://id.example.com"
# client_id         = "scopegate"
# client_secret_file = "/run/credentials/scopegate.service/corp_secret"

# [services.drive]
# provider = "google"
# mcp_url  = "https://drive-mcp.example.com/mcp"
# scopes   = ["https://www.googleapis.com/auth/drive.readonly"]
# [services.drive.tools]                # tool -> scopes it needs, for `scopes report`
# search_files = ["https://www.googleapis.com/auth/drive.readonly"]
# (GitHub's MCP server at https://api.githubcopilot.com/mcp/ has its map built in; a
#  self-hosted copy takes tool_map = "github-mcp-server")

# [services.search]                     # a service that only takes API keys
# kind     = "api_key"
# mcp_url  = "https://search-mcp.example.com/mcp"
# header   = "X-API-Key"                # default: Authorization: Bearer <key>
# rotate_after_days = 90
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn starter_and_design_examples_parse() {
        let c = Config::parse(STARTER, "starter").unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.limits.listener_threads, 0, "one per core unless set");
        let l = Config::parse("[limits]\nlistener_threads = 3\n", "t.toml").unwrap();
        assert_eq!(l.limits.listener_threads, 3);
        let c = Config::parse(
            r#"
            [providers.corp]
            issuer = "https://id.example.com"
            client_id = "scopegate"
            client_secret_env = "CORP_CLIENT_SECRET"
            [services.files]
            provider = "corp"
            mcp_url = "http://127.0.0.1:9500/mcp"
            scopes = ["files.read"]
            resource = "http://127.0.0.1:9500/mcp"
            [services.files.tools]
            read_file = ["files.read"]
            [services.search]
            kind = "api_key"
            mcp_url = "https://search-mcp.example.com/mcp"
            header = "X-API-Key"
            rotate_after_days = 90
            "#,
            "t.toml",
        )
        .unwrap();
        assert!(c.services["search"].is_api_key());
        assert_eq!(c.services["files"].tools["read_file"], vec!["files.read"]);
    }

    /// The README's configuration example is a working configuration.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap();
        let c = Config::parse(block, "README.md").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.services["github"].tools["get_me"], Vec::<String>::new());
        assert_eq!(c.services["files"].tools["write_file"], vec!["files.write"]);
    }

    #[test]
    fn builtin_tool_maps_by_name_or_hosted_url_under_the_configured_one() {
        let svc = |extra: &str| {
            format!(
                "[services.gh]\nkind = \"api_key\"\nmcp_url = \"https://api.githubcopilot.com/mcp/\"\n{extra}"
            )
        };
        // Known by its URL; a configured entry overrides one tool and adds another.
        let c = Config::parse(
            &svc("[services.gh.tools]\nget_me = [\"read:user\"]\nmine = [\"repo\"]\n"),
            "t.toml",
        )
        .unwrap();
        let t = &c.services["gh"].tools;
        assert_eq!(t["get_file_contents"], vec!["repo"]);
        assert_eq!(t["get_me"], vec!["read:user"]);
        assert_eq!(t["mine"], vec!["repo"]);
        // Named explicitly for a server at another address.
        let c = Config::parse(
            "[services.gh]\nkind = \"api_key\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\ntool_map = \"github-mcp-server\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.services["gh"].tools["create_gist"], vec!["gist"]);
        // No map for other servers, and an unknown name is an error.
        let c = Config::parse(
            "[services.x]\nkind = \"api_key\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.services["x"].tools.is_empty());
        // "none" turns the built-in map off for a hosted server.
        let c = Config::parse(&svc("tool_map = \"none\"\n"), "t.toml").unwrap();
        assert!(c.services["gh"].tools.is_empty());
        let e = err(&svc("tool_map = \"slack\"\n"));
        assert!(
            e.contains("services.gh.tool_map") && e.contains("github-mcp-server"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = err("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(e.starts_with("t.toml: ") && e.contains("bogus"), "{e}");
        let e = err("[services.x]\nkind = \"api_key\"\nmcp_url = \"http://example.com/mcp\"\n");
        assert!(
            e.contains("services.x.mcp_url") && e.contains("loopback"),
            "{e}"
        );
        let e = err(
            "[providers.p]\npreset = \"google\"\nclient_id = \"a\"\nclient_secret = \"hunter2\"\n",
        );
        assert!(
            e.contains("client_secret_env") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("[services.x]\nprovider = \"nope\"\nmcp_url = \"https://a.example/mcp\"\n");
        assert!(e.contains("services.x.provider"), "{e}");
        let e =
            err("[services.\"a/b\"]\nkind = \"api_key\"\nmcp_url = \"https://a.example/mcp\"\n");
        assert!(e.contains("letters, digits"), "{e}");
        let e = err("[limits]\nmax_connections = 0\n");
        assert!(e.contains("limits.max_connections"), "{e}");
    }

    #[test]
    fn webhook_secrets_and_set_receivers_are_checked() {
        let c = Config::parse(
            "[providers.gh]\npreset = \"github-app\"\nclient_id = \"c\"\nwebhook_secret_env = \"GH_HOOK\"\n\
             [providers.g]\npreset = \"google\"\nclient_id = \"g-id\"\n\
             [providers.corp]\nissuer = \"https://id.example\"\nclient_id = \"corp\"\n\
             risc_jwks_uri = \"http://127.0.0.1:9/jwks\"\nrisc_issuer = \"https://id.example\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.providers["gh"].webhook_secret,
            ClientSecretSource::Env("GH_HOOK".into())
        );
        assert_eq!(c.providers["gh"].risc, None);
        let g = c.providers["g"].risc.as_ref().unwrap();
        assert_eq!(
            (g.issuer.as_str(), g.audiences.as_slice()),
            (GOOGLE_RISC_ISSUER, &["g-id".to_owned()][..])
        );
        assert_eq!(
            c.providers["corp"].risc.as_ref().unwrap().audiences,
            ["corp"]
        );
        for (text, want) in [
            (
                "preset = \"github\"\nclient_id = \"c\"\nwebhook_secret = \"hunter2\"",
                "webhook_secret_env",
            ),
            (
                "preset = \"slack\"\nclient_id = \"c\"\nwebhook_secret_env = \"A\"\nwebhook_secret_file = \"/f\"",
                "not both",
            ),
            (
                "preset = \"google\"\nclient_id = \"c\"\nwebhook_secret_env = \"A\"",
                "apply only to",
            ),
            (
                "issuer = \"https://id.example\"\nclient_id = \"c\"\nrisc_jwks_uri = \"https://id.example/jwks\"",
                "risc_issuer: missing",
            ),
            (
                "issuer = \"https://id.example\"\nclient_id = \"c\"\nrisc_issuer = \"x\"",
                "risc_jwks_uri: missing",
            ),
            (
                "issuer = \"https://id.example\"\nclient_id = \"c\"\nrisc_issuer = \"x\"\nrisc_jwks_uri = \"http://10.0.0.1/jwks\"",
                "loopback",
            ),
        ] {
            let e = err(&format!("[providers.p]\n{text}\n"));
            assert!(e.contains(want) && !e.contains("hunter2"), "{text}: {e}");
        }
    }

    #[test]
    fn http_is_accepted_for_loopback_only() {
        for ok in [
            "http://127.0.0.1:9/mcp",
            "http://localhost/mcp",
            "http://[::1]:9/",
            "https://x.example/",
        ] {
            assert!(url_field("k", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://example.com/",
            "ftp://127.0.0.1/",
            "https://u:p@x.example/",
        ] {
            assert!(url_field("k", bad).is_err(), "{bad}");
        }
    }
}
