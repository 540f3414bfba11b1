//! JSON Web Key Sets (RFC 7517) for Security Event Token signatures: the parser (pure, fuzzed)
//! and a per-provider cache that fetches the configured `jwks_uri`, refetches when a token
//! names an unknown `kid` at most once per interval (so forged kids cannot make the gateway
//! hammer the provider), and keeps the last good set when a fetch fails.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use url::Url;

/// JWKS documents larger than this are refused unread.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
const MAX_KEYS: usize = 32;
/// A fetched set is used this long before it is fetched again.
const TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches for one provider.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

/// A public key a SET may be signed with: RS256 (RSA PKCS#1 v1.5 with SHA-256, what Google
/// uses) or ES256 (ECDSA P-256 with SHA-256), RFC 7518 §3.3 and §3.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed SEC1 point `04 ‖ x ‖ y`.
    P256 {
        point: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Jwk {
    /// Verifies a JWS signature (RFC 7515 §5.2) over `signing_input`. The key type must match
    /// the algorithm: an RSA key never verifies an ES256 token, nor the reverse.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        use ring::signature as sig;
        match (self, alg) {
            (Self::Rsa { n, e }, Alg::Rs256) => sig::RsaPublicKeyComponents { n, e }
                .verify(&sig::RSA_PKCS1_2048_8192_SHA256, signing_input, signature)
                .is_ok(),
            // JWS ES256 signatures are the fixed-width r ‖ s (RFC 7518 §3.4), not DER.
            (Self::P256 { point }, Alg::Es256) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signing_input, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a keys array")]
    NotJwks,
    #[error("the JWKS could not be fetched: {0}")]
    Fetch(String),
    #[error("no key with this kid")]
    UnknownKid,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// Parses a JWKS into its usable signing keys by `kid`. Keys without a kid, for encryption
/// only, of other types or malformed are skipped; at most `MAX_KEYS` are kept.
pub fn parse(body: &[u8]) -> Result<HashMap<String, Jwk>, JwksError> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::NotJwks);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NotJwks)?;
    let mut out = HashMap::new();
    for k in keys {
        if out.len() == MAX_KEYS {
            break;
        }
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        let Some(kid) = s("kid").and_then(crate::oauth::token::identifier) else {
            continue;
        };
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let jwk = match s("kty") {
            Some("RSA") => match (s("n").and_then(b64), s("e").and_then(b64)) {
                (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() && e.len() <= 8 => {
                    Jwk::Rsa { n, e }
                }
                _ => continue,
            },
            Some("EC") if s("crv") == Some("P-256") => {
                match (s("x").and_then(b64), s("y").and_then(b64)) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut point = Vec::with_capacity(65);
                        point.push(4);
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        Jwk::P256 { point }
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.insert(kid, jwk);
    }
    Ok(out)
}

#[derive(Default)]
struct Entry {
    keys: HashMap<String, Jwk>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

pub struct JwksCache {
    http: reqwest::Client,
    min_refetch: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl JwksCache {
    pub fn new(min_refetch: Duration) -> Self {
        // The URL is the admin's; no redirects are followed (DESIGN "Limits").
        let http = crate::oauth::client::outbound_client(Duration::from_secs(10));
        Self {
            http,
            min_refetch,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key `kid` of `provider`, fetching `uri` when the cached set is old or lacks it.
    pub async fn key(&self, provider: &str, uri: &Url, kid: &str) -> Result<Jwk, JwksError> {
        let now = Instant::now();
        {
            let mut m = self
                .entries
                .lock()
                .map_err(|_| JwksError::Fetch("cache poisoned".into()))?;
            let e = m.entry(provider.to_owned()).or_default();
            let fresh = e.fetched.is_some_and(|t| now.duration_since(t) < TTL);
            if fresh && let Some(k) = e.keys.get(kid) {
                return Ok(k.clone());
            }
            let may_fetch = e
                .last_attempt
                .is_none_or(|t| now.duration_since(t) >= self.min_refetch);
            if !may_fetch {
                return e.keys.get(kid).cloned().ok_or(JwksError::UnknownKid);
            }
            e.last_attempt = Some(now);
        }
        let fetched = self.fetch(uri).await;
        let mut m = self
            .entries
            .lock()
            .map_err(|_| JwksError::Fetch("cache poisoned".into()))?;
        let e = m.entry(provider.to_owned()).or_default();
        match fetched {
            Ok(keys) => {
                e.keys = keys;
                e.fetched = Some(Instant::now());
                e.keys.get(kid).cloned().ok_or(JwksError::UnknownKid)
            }
            // The last good set still serves the kids it has.
            Err(err) => e.keys.get(kid).cloned().ok_or(err),
        }
    }

    async fn fetch(&self, uri: &Url) -> Result<HashMap<String, Jwk>, JwksError> {
        let resp = self
            .http
            .get(uri.clone())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(JwksError::Fetch(format!("HTTP {}", resp.status().as_u16())));
        }
        let body = crate::oauth::client::read_capped(resp, MAX_JWKS_BYTES)
            .await
            .map_err(JwksError::Fetch)?;
        let keys = parse(&body)?;
        tracing::info!(keys = keys.len(), "JWKS fetched");
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_keys_are_kept_and_the_rest_skipped() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let body = format!(
            r#"{{"keys":[
              {{"kty":"EC","crv":"P-256","kid":"ec1","x":"{x}","y":"{y}","use":"sig"}},
              {{"kty":"EC","crv":"P-384","kid":"ec2","x":"{x}","y":"{y}"}},
              {{"kty":"RSA","kid":"rsa1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB","use":"sig"}},
              {{"kty":"RSA","kid":"enc","n":"AQAB","e":"AQAB","use":"enc"}},
              {{"kty":"RSA","n":"AQAB","e":"AQAB"}},
              {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}}
            ]}}"#
        );
        let keys = parse(body.as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ec1", "rsa1"]);
        assert!(matches!(&keys["ec1"], Jwk::P256 { point } if point.len() == 65));
        assert_eq!(parse(b"[]"), Err(JwksError::NotJwks));
        assert_eq!(parse(br#"{"keys":{}}"#), Err(JwksError::NotJwks));
    }

    #[test]
    fn a_key_never_verifies_another_algorithm() {
        let rsa = Jwk::Rsa {
            n: vec![0xc5; 256],
            e: vec![1, 0, 1],
        };
        assert!(!rsa.verify(Alg::Es256, b"x", &[0; 64]));
        let ec = Jwk::P256 { point: vec![4; 65] };
        assert!(!ec.verify(Alg::Rs256, b"x", &[0; 256]));
    }
}
