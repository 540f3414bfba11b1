//! Talks to authorization servers: metadata discovery, the code exchange and revocation.
//! Every response body is capped, redirects are not followed (a token endpoint has no reason
//! to redirect, and following one could send credentials elsewhere), and every request has a
//! deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use url::Url;

use super::dpop::{DpopKey, Nonces};
use super::provider::{
    ClientAuth, DiscoveryError, Metadata, ResolvedProvider, Revocation, from_metadata,
    metadata_urls, resolve_static,
};
use super::token::{self, TokenError, TokenResponse};
use crate::config::{Provider, ProviderEndpoints};
use crate::secret::ClientSecret;

const METADATA_CAP: usize = 256 * 1024;
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("the authorization server could not be reached: {0}")]
    Network(String),
    /// HTTP 429 or 5xx: the request was not processed; try later (RFC 9110 §10.2.3).
    #[error("the authorization server is unavailable (HTTP {status})")]
    Unavailable {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Credentials(String),
}

/// The client's credentials for one provider.
pub struct ClientCredentials {
    pub client_id: String,
    pub secret: Option<ClientSecret>,
}

impl ClientCredentials {
    /// Reads the secret from the env var or file the config names, at the moment of use.
    pub fn load(provider_name: &str, p: &Provider) -> Result<Self, ExchangeError> {
        let secret = p
            .client_secret
            .read(provider_name)
            .map_err(ExchangeError::Credentials)?;
        Ok(Self {
            client_id: p.client_id.clone(),
            secret,
        })
    }
}

pub struct OAuthClient {
    http: reqwest::Client,
    discovered: Mutex<HashMap<String, (Instant, Arc<ResolvedProvider>)>>,
    /// The newest DPoP nonce of every server we talk to (RFC 9449 §8), shared with the proxy.
    pub nonces: Arc<Nonces>,
}

impl Default for OAuthClient {
    fn default() -> Self {
        Self::new()
    }
}

impl OAuthClient {
    pub fn new() -> Self {
        Self {
            http: outbound_client(Duration::from_secs(15)),
            discovered: Mutex::new(HashMap::new()),
            nonces: Arc::new(Nonces::default()),
        }
    }

    /// Resolves a configured provider to endpoints, discovering (and caching) by issuer.
    pub async fn resolve(
        &self,
        name: &str,
        p: &Provider,
    ) -> Result<Arc<ResolvedProvider>, DiscoveryError> {
        if let Some(r) = resolve_static(p) {
            return Ok(Arc::new(r));
        }
        let ProviderEndpoints::Issuer(issuer) = &p.endpoints else {
            return Err(DiscoveryError::NotFound(name.to_owned()));
        };
        if let Ok(cache) = self.discovered.lock()
            && let Some((at, r)) = cache.get(name)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(r.clone());
        }
        let mut found = self.discover(issuer).await?;
        // The config's word wins over what the server advertises.
        if let Some(d) = p.dpop {
            found.dpop = d;
        }
        let resolved = Arc::new(found);
        if let Ok(mut cache) = self.discovered.lock() {
            cache.insert(name.to_owned(), (Instant::now(), resolved.clone()));
        }
        Ok(resolved)
    }

    async fn discover(&self, issuer: &Url) -> Result<ResolvedProvider, DiscoveryError> {
        for url in metadata_urls(issuer) {
            let resp = match self
                .http
                .get(url.clone())
                .header("Accept", "application/json")
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return Err(DiscoveryError::Fetch(e.without_url().to_string())),
            };
            if !resp.status().is_success() {
                continue;
            }
            let body = read_capped(resp, METADATA_CAP)
                .await
                .map_err(DiscoveryError::Fetch)?;
            let meta: Metadata = serde_json::from_slice(&body)
                .map_err(|_| DiscoveryError::Fetch(format!("{url} is not valid metadata JSON")))?;
            return from_metadata(issuer, meta);
        }
        Err(DiscoveryError::NotFound(issuer.to_string()))
    }

    /// RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.5) and, when wanted, RFC 8707 `resource`;
    /// with a DPoP proof (RFC 9449 §5) when the connection has a key.
    #[allow(clippy::too_many_arguments)]
    pub async fn exchange_code(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        code: &str,
        verifier: &[u8],
        redirect_uri: &str,
        resource: Option<&Url>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, ExchangeError> {
        let verifier = std::str::from_utf8(verifier)
            .map_err(|_| ExchangeError::Credentials("corrupt PKCE verifier".into()))?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let resource_s = resource.map(Url::to_string);
        if let (Some(r), true) = (resource_s.as_deref(), rp.send_resource) {
            form.push(("resource", r));
        }
        self.token_request(rp, creds, form, dpop).await
    }

    /// RFC 6749 §6 (with RFC 8707 `resource` when the service wants it, and a DPoP proof
    /// when the connection has a key).
    pub async fn refresh(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        refresh_token: &[u8],
        resource: Option<&Url>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, ExchangeError> {
        let rt = zeroize::Zeroizing::new(String::from_utf8_lossy(refresh_token).into_owned());
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ];
        let resource_s = resource.map(Url::to_string);
        if let (Some(r), true) = (resource_s.as_deref(), rp.send_resource) {
            form.push(("resource", r));
        }
        self.token_request(rp, creds, form, dpop).await
    }

    async fn token_request(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        form: Vec<(&str, &str)>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, ExchangeError> {
        let mut nonce_retried = false;
        loop {
            let (status, body, fresh_nonce) = self.token_post(rp, creds, &form, dpop).await?;
            let parsed = token::parse(status, &body, rp.quirks);
            // RFC 9449 §8: the server wants a (newer) nonce and did not process the request,
            // so one retry with it is safe even for a rotating refresh token. Exactly one: a
            // server that keeps asking gets a transient failure, never a strike.
            if let Err(TokenError::Refused { error, .. }) = &parsed
                && error == "use_dpop_nonce"
                && dpop.is_some()
                && fresh_nonce
                && !nonce_retried
            {
                nonce_retried = true;
                continue;
            }
            return Ok(parsed?);
        }
    }

    /// One POST to the token endpoint: the status, the (capped) body, and whether it carried
    /// a new DPoP nonce.
    async fn token_post(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        form: &[(&str, &str)],
        dpop: Option<&DpopKey>,
    ) -> Result<(u16, Vec<u8>, bool), ExchangeError> {
        let mut form = form.to_vec();
        let secret_text = creds
            .secret
            .as_ref()
            .map(|s| String::from_utf8_lossy(s.expose_secret()).into_owned())
            .map(zeroize::Zeroizing::new);
        let mut req = self
            .http
            .post(rp.token_endpoint.clone())
            .header("Accept", "application/json");
        if let Some(key) = dpop {
            let nonce = self.nonces.get(&rp.token_endpoint);
            let proof = key
                .proof("POST", &rp.token_endpoint, nonce.as_deref(), None)
                .map_err(|e| ExchangeError::Credentials(e.to_string()))?;
            req = req.header("DPoP", proof);
        }
        match (rp.client_auth, secret_text.as_deref()) {
            (ClientAuth::Basic, Some(secret)) => {
                req = req.header("Authorization", basic_auth(&creds.client_id, secret));
            }
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id", &creds.client_id));
                form.push(("client_secret", secret));
            }
            (_, None) => form.push(("client_id", &creds.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| ExchangeError::Network(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let fresh_nonce =
            dpop.is_some() && self.nonces.remember(&rp.token_endpoint, resp.headers());
        if status == 429 || status >= 500 {
            // Only delta-seconds; an HTTP-date (rare from token endpoints) falls back to
            // our own backoff.
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return Err(ExchangeError::Unavailable {
                status,
                retry_after,
            });
        }
        let body = read_capped(resp, token::MAX_BODY_BYTES)
            .await
            .map_err(|_| ExchangeError::Token(TokenError::TooLarge))?;
        Ok((status, body, fresh_nonce))
    }

    /// Revokes one token at the provider. RFC 7009 §2.1 (with a type hint), or the vendor's own
    /// call for GitHub and Slack.
    pub async fn revoke(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        token: &[u8],
        hint: &str,
    ) -> Result<(), ExchangeError> {
        let token = zeroize::Zeroizing::new(String::from_utf8_lossy(token).into_owned());
        let secret = creds.secret.as_ref().map(|s| {
            zeroize::Zeroizing::new(String::from_utf8_lossy(s.expose_secret()).into_owned())
        });
        let req = match &rp.revocation {
            Revocation::None => {
                return Err(ExchangeError::Credentials(
                    "the provider has no revocation endpoint".into(),
                ));
            }
            Revocation::Rfc7009(url) => {
                let mut form: Vec<(&str, &str)> =
                    vec![("token", &token), ("token_type_hint", hint)];
                let mut req = self.http.post(url.clone());
                match (rp.client_auth, secret.as_deref()) {
                    (ClientAuth::Basic, Some(s)) => {
                        req = req.header("Authorization", basic_auth(&creds.client_id, s))
                    }
                    (ClientAuth::Post, Some(s)) => {
                        form.push(("client_id", &creds.client_id));
                        form.push(("client_secret", s));
                    }
                    (_, None) => form.push(("client_id", &creds.client_id)),
                }
                req.form(&form)
            }
            Revocation::GitHub { grant } => {
                let what = if *grant { "grant" } else { "token" };
                let url = format!(
                    "https://api.github.com/applications/{}/{what}",
                    creds.client_id
                );
                let s = secret.as_deref().map_or("", |s| s.as_str());
                self.http
                    .delete(url)
                    .header("Authorization", basic_auth(&creds.client_id, s))
                    .header("Accept", "application/vnd.github+json")
                    .json(&serde_json::json!({ "access_token": token.as_str() }))
            }
            Revocation::Slack => self
                .http
                .post("https://slack.com/api/auth.revoke")
                .bearer_auth(token.as_str()),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| ExchangeError::Network(e.without_url().to_string()))?;
        let status = resp.status();
        // RFC 7009 §2.2: 200 whether or not the token was valid; GitHub answers 204.
        if status.is_success() {
            return Ok(());
        }
        Err(ExchangeError::Network(format!(
            "revocation answered HTTP {}",
            status.as_u16()
        )))
    }

    /// The numeric GitHub user id behind a token (`GET /user`), which `github_app_authorization`
    /// webhooks name as `sender.id`.
    pub async fn github_user_id(&self, access_token: &[u8]) -> Result<String, ExchangeError> {
        let token = zeroize::Zeroizing::new(String::from_utf8_lossy(access_token).into_owned());
        let resp = self
            .http
            .get("https://api.github.com/user")
            .bearer_auth(token.as_str())
            .header("Accept", "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| ExchangeError::Network(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(ExchangeError::Network(format!(
                "GET /user answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_capped(resp, METADATA_CAP)
            .await
            .map_err(ExchangeError::Network)?;
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
            .map(|id| id.to_string())
            .ok_or_else(|| ExchangeError::Network("GET /user has no numeric id".into()))
    }

    pub async fn revoke_refresh_then_access(
        &self,
        rp: &ResolvedProvider,
        creds: &ClientCredentials,
        refresh: Option<&[u8]>,
        access: Option<&[u8]>,
    ) -> Result<(), ExchangeError> {
        // RFC 7009 §2.1: revoking the refresh token first also ends its access tokens at
        // servers that support it; the access token is revoked too for those that do not.
        if let Some(r) = refresh {
            self.revoke(rp, creds, r, "refresh_token").await?;
        }
        if let Some(a) = access
            && !matches!(rp.revocation, Revocation::GitHub { grant: true })
        {
            self.revoke(rp, creds, a, "access_token").await?;
        }
        Ok(())
    }
}

/// A client for servers the admin configured: no redirects (one could send credentials
/// elsewhere), a connect timeout and an overall deadline.
pub(crate) fn outbound_client(timeout: Duration) -> reqwest::Client {
    // reqwest's rustls needs a process-wide crypto provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    #[allow(clippy::expect_used)] // invariant: this builder configuration is static and valid.
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        // Shorter than the keep-alive timeouts servers commonly use (Node's is 5 s): a token
        // request written on a connection the server is closing fails with no answer, and a
        // refresh token request cannot be safely resent (the server may have rotated).
        .pool_idle_timeout(Duration::from_secs(3))
        .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client")
}

/// RFC 6749 §2.3.1: both parts form-urlencoded before base64.
fn basic_auth(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = zeroize::Zeroizing::new(format!("{}:{}", enc(id), enc(secret)));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    )
}

pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|l| l as usize > cap) {
        return Err("the response is too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > cap {
            return Err("the response is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
