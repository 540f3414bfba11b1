//! Providers resolved to endpoints and quirks: the built-in presets, servers discovered from
//! an issuer (RFC 8414, then OpenID Connect Discovery), and explicit endpoints.

use serde::Deserialize;
use url::Url;

use super::token::Quirks;
use crate::config::{Preset, Provider, ProviderEndpoints};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// RFC 7009 at this endpoint.
    Rfc7009(Url),
    /// GitHub: `DELETE /applications/{client_id}/grant` (OAuth App) or `/token` (GitHub App).
    GitHub {
        grant: bool,
    },
    /// Slack: `auth.revoke` with the token.
    Slack,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// RFC 6749 §2.3.1 HTTP Basic (the default every server must support).
    Basic,
    /// Credentials in the form body (Google, GitHub, Slack document this).
    Post,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProvider {
    /// The issuer identifier, when known: compared to `iss` in callbacks (RFC 9207).
    pub issuer: Option<String>,
    /// The server says it sends `iss` in every authorization response.
    pub iss_supported: bool,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub revocation: Revocation,
    pub client_auth: ClientAuth,
    pub quirks: Quirks,
    pub extra_authorize_params: Vec<(&'static str, &'static str)>,
    /// Slack asks for user scopes in `user_scope`.
    pub scope_param: &'static str,
    /// Scopes the preset always adds (Entra needs `offline_access` for a refresh token).
    pub implied_scopes: Vec<&'static str>,
    /// Entra rejects RFC 8707 `resource` together with `scope` (AADSTS9010010).
    pub send_resource: bool,
    /// Tokens are requested sender-constrained with DPoP (RFC 9449).
    pub dpop: bool,
}

#[allow(clippy::expect_used)] // invariant: the preset URLs below are constants that parse.
fn u(s: &str) -> Url {
    Url::parse(s).expect("preset URL")
}

pub fn preset(p: &Preset, tenant: Option<&str>) -> ResolvedProvider {
    let base = ResolvedProvider {
        issuer: None,
        iss_supported: false,
        authorization_endpoint: u("https://invalid.example/"),
        token_endpoint: u("https://invalid.example/"),
        revocation: Revocation::None,
        client_auth: ClientAuth::Post,
        quirks: Quirks::default(),
        extra_authorize_params: Vec::new(),
        scope_param: "scope",
        implied_scopes: Vec::new(),
        send_resource: true,
        // None of the presets' providers supports DPoP; `dpop = true` turns it on.
        dpop: false,
    };
    match p {
        // Google returns a refresh token only with access_type=offline, and again on a
        // re-consent only with prompt=consent.
        Preset::Google => ResolvedProvider {
            issuer: Some("https://accounts.google.com".into()),
            iss_supported: true,
            authorization_endpoint: u("https://accounts.google.com/o/oauth2/v2/auth"),
            token_endpoint: u("https://oauth2.googleapis.com/token"),
            revocation: Revocation::Rfc7009(u("https://oauth2.googleapis.com/revoke")),
            extra_authorize_params: vec![("access_type", "offline"), ("prompt", "consent")],
            ..base
        },
        // GitHub: errors in 200 bodies, tokens of OAuth Apps do not expire.
        Preset::Github | Preset::GithubApp => ResolvedProvider {
            authorization_endpoint: u("https://github.com/login/oauth/authorize"),
            token_endpoint: u("https://github.com/login/oauth/access_token"),
            revocation: Revocation::GitHub {
                grant: *p == Preset::Github,
            },
            quirks: Quirks {
                expiry_optional: true,
                slack: false,
            },
            ..base
        },
        Preset::Slack => ResolvedProvider {
            authorization_endpoint: u("https://slack.com/oauth/v2/authorize"),
            token_endpoint: u("https://slack.com/api/oauth.v2.access"),
            revocation: Revocation::Slack,
            quirks: Quirks {
                expiry_optional: true,
                slack: true,
            },
            scope_param: "user_scope",
            ..base
        },
        Preset::Microsoft => {
            let t = tenant.unwrap_or("common");
            ResolvedProvider {
                authorization_endpoint: u(&format!(
                    "https://login.microsoftonline.com/{t}/oauth2/v2.0/authorize"
                )),
                token_endpoint: u(&format!(
                    "https://login.microsoftonline.com/{t}/oauth2/v2.0/token"
                )),
                implied_scopes: vec!["offline_access"],
                send_resource: false,
                ..base
            }
        }
    }
}

/// The fields of RFC 8414 / OIDC metadata we use.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// RFC 9449 §5.1.
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "no authorization server metadata at {0} (tried RFC 8414 and OpenID Connect discovery)"
    )]
    NotFound(String),
    #[error("the metadata names issuer {found:?}, not the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error(
        "the authorization server does not support PKCE S256 (code_challenge_methods_supported lacks it)"
    )]
    NoS256,
    #[error("the metadata has an invalid {0}")]
    BadEndpoint(&'static str),
    #[error("fetching metadata failed: {0}")]
    Fetch(String),
}

/// RFC 8414 §3.1: the well-known segment goes between host and path; then OIDC Discovery
/// 1.0 §4 (appended), and the RFC 8414 form of the OIDC name for path issuers.
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut origin = issuer.clone();
    origin.set_path("");
    origin.set_query(None);
    let mut out = Vec::new();
    for candidate in [
        format!("/.well-known/oauth-authorization-server{path}"),
        format!("/.well-known/openid-configuration{path}"),
        format!("{path}/.well-known/openid-configuration"),
    ] {
        let mut u = origin.clone();
        u.set_path(&candidate);
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

/// Checks metadata against the configured issuer and builds the provider from it.
pub fn from_metadata(
    configured_issuer: &Url,
    m: Metadata,
) -> Result<ResolvedProvider, DiscoveryError> {
    // RFC 8414 §3.3: the issuer must be identical to the one used to build the URL.
    let expected = configured_issuer.as_str().trim_end_matches('/');
    if m.issuer.trim_end_matches('/') != expected {
        return Err(DiscoveryError::IssuerMismatch {
            expected: expected.to_owned(),
            found: crate::store::audit::escape_untrusted(&m.issuer),
        });
    }
    if !m
        .code_challenge_methods_supported
        .iter()
        .any(|x| x == "S256")
    {
        return Err(DiscoveryError::NoS256);
    }
    // http is accepted only when the configured issuer itself is a loopback http URL: a
    // remote https issuer cannot send the client secret to a cleartext endpoint.
    let issuer_loopback_http = configured_issuer.scheme() == "http"
        && matches!(
            configured_issuer.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]")
        );
    let endpoint = |name: &'static str, s: &str| -> Result<Url, DiscoveryError> {
        let u = Url::parse(s).map_err(|_| DiscoveryError::BadEndpoint(name))?;
        let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if u.scheme() == "https" || (u.scheme() == "http" && loopback && issuer_loopback_http) {
            Ok(u)
        } else {
            Err(DiscoveryError::BadEndpoint(name))
        }
    };
    let basic = m.token_endpoint_auth_methods_supported.is_empty()
        || m.token_endpoint_auth_methods_supported
            .iter()
            .any(|x| x == "client_secret_basic");
    Ok(ResolvedProvider {
        issuer: Some(m.issuer.clone()),
        iss_supported: m.authorization_response_iss_parameter_supported,
        authorization_endpoint: endpoint("authorization_endpoint", &m.authorization_endpoint)?,
        token_endpoint: endpoint("token_endpoint", &m.token_endpoint)?,
        revocation: match m.revocation_endpoint.as_deref() {
            Some(r) => Revocation::Rfc7009(endpoint("revocation_endpoint", r)?),
            None => Revocation::None,
        },
        client_auth: if basic {
            ClientAuth::Basic
        } else {
            ClientAuth::Post
        },
        quirks: Quirks::default(),
        extra_authorize_params: Vec::new(),
        scope_param: "scope",
        implied_scopes: Vec::new(),
        send_resource: true,
        dpop: m
            .dpop_signing_alg_values_supported
            .iter()
            .any(|a| a == super::dpop::ALG),
    })
}

/// A provider that needs no network to resolve (presets and explicit endpoints).
pub fn resolve_static(p: &Provider) -> Option<ResolvedProvider> {
    let mut r = resolve_static_endpoints(p)?;
    r.dpop = p.dpop.unwrap_or(false);
    Some(r)
}

fn resolve_static_endpoints(p: &Provider) -> Option<ResolvedProvider> {
    match &p.endpoints {
        ProviderEndpoints::Preset(preset_kind) => Some(preset(preset_kind, p.tenant.as_deref())),
        ProviderEndpoints::Explicit {
            authorization,
            token,
            revocation,
        } => Some(ResolvedProvider {
            issuer: None,
            iss_supported: false,
            authorization_endpoint: authorization.clone(),
            token_endpoint: token.clone(),
            revocation: revocation
                .clone()
                .map_or(Revocation::None, Revocation::Rfc7009),
            client_auth: ClientAuth::Basic,
            quirks: Quirks::default(),
            extra_authorize_params: Vec::new(),
            scope_param: "scope",
            implied_scopes: Vec::new(),
            send_resource: true,
            dpop: false,
        }),
        ProviderEndpoints::Issuer(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc8414_path_insertion() {
        let got: Vec<String> = metadata_urls(&Url::parse("https://as.example/tenant1").unwrap())
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/.well-known/openid-configuration/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration"
            ]
        );
        let got = metadata_urls(&Url::parse("https://as.example").unwrap());
        assert_eq!(got.len(), 2);
    }

    fn meta(issuer: &str, methods: &[&str]) -> Metadata {
        Metadata {
            issuer: issuer.into(),
            authorization_endpoint: "https://as.example/auth".into(),
            token_endpoint: "https://as.example/token".into(),
            revocation_endpoint: None,
            code_challenge_methods_supported: methods.iter().map(|s| s.to_string()).collect(),
            authorization_response_iss_parameter_supported: true,
            token_endpoint_auth_methods_supported: vec![],
            dpop_signing_alg_values_supported: vec![],
        }
    }

    #[test]
    fn dpop_is_used_when_es256_is_advertised() {
        let iss = Url::parse("https://as.example").unwrap();
        assert!(
            !from_metadata(&iss, meta("https://as.example", &["S256"]))
                .unwrap()
                .dpop
        );
        let mut m = meta("https://as.example", &["S256"]);
        m.dpop_signing_alg_values_supported = vec!["RS256".into()];
        assert!(!from_metadata(&iss, m).unwrap().dpop, "we only sign ES256");
        let mut m = meta("https://as.example", &["S256"]);
        m.dpop_signing_alg_values_supported = vec!["EdDSA".into(), "ES256".into()];
        assert!(from_metadata(&iss, m).unwrap().dpop);
    }

    #[test]
    fn metadata_is_checked() {
        let iss = Url::parse("https://as.example").unwrap();
        assert!(from_metadata(&iss, meta("https://as.example", &["S256"])).is_ok());
        assert_eq!(
            from_metadata(&iss, meta("https://as.example", &["plain"])).unwrap_err(),
            DiscoveryError::NoS256
        );
        assert!(matches!(
            from_metadata(&iss, meta("https://evil.example", &["S256"])),
            Err(DiscoveryError::IssuerMismatch { .. })
        ));
        let mut m = meta("https://as.example", &["S256"]);
        m.token_endpoint = "http://as.example/token".into();
        assert_eq!(
            from_metadata(&iss, m).unwrap_err(),
            DiscoveryError::BadEndpoint("token_endpoint")
        );
    }

    #[test]
    fn presets_carry_their_quirks() {
        let g = preset(&Preset::Google, None);
        assert!(
            g.extra_authorize_params
                .contains(&("access_type", "offline"))
        );
        assert!(g.extra_authorize_params.contains(&("prompt", "consent")));
        let m = preset(&Preset::Microsoft, Some("contoso"));
        assert!(!m.send_resource && m.token_endpoint.as_str().contains("/contoso/"));
        assert_eq!(preset(&Preset::Slack, None).scope_param, "user_scope");
        assert!(preset(&Preset::Github, None).quirks.expiry_optional);
    }
}
