//! DPoP (RFC 9449): a P-256 key per connection proves possession on every token and resource
//! request, so a stolen access token (or refresh token of a public client) is useless without
//! the key. The private key is sealed in the vault beside the tokens it is bound to; in memory
//! it lives as long as the connection's credential is cached (like the access token itself).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};
use url::Url;

use crate::secret::SecretBytes;

/// The vault field holding a connection's DPoP private key (PKCS#8).
pub const KEY_FIELD: &str = "dpop_key";
/// The only algorithm we sign with (RFC 9449 §4.2 requires an asymmetric one; ES256 is the
/// one every DPoP server supports).
pub const ALG: &str = "ES256";
/// Nonces larger than this are not remembered (RFC 9449 §8.1 sets no limit; we do).
const MAX_NONCE_LEN: usize = 512;
const MAX_NONCE_ENDPOINTS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    #[error("the connection's DPoP key could not be read")]
    BadKey,
    #[error("a DPoP proof could not be signed")]
    Sign,
}

/// A connection's DPoP key pair.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    /// The public key as a JWK with only the RFC 7638 §3.2 members, in lexicographic order.
    jwk: String,
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DpopKey({})", self.thumbprint)
    }
}

/// A fresh P-256 private key in PKCS#8 form, ready to seal.
pub fn generate() -> Result<SecretBytes, DpopError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|_| DpopError::Sign)?;
    Ok(SecretBytes::new(doc.as_ref().to_vec()))
}

impl DpopKey {
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, DpopError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| DpopError::BadKey)?;
        // An uncompressed SEC1 point: 0x04 ‖ X (32 bytes) ‖ Y (32 bytes).
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(DpopError::BadKey);
        }
        let jwk = jwk_json(&point[1..33], &point[33..]);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()));
        Ok(Self {
            pair,
            jwk,
            thumbprint,
        })
    }

    /// The RFC 7638 JWK SHA-256 thumbprint (what `dpop_jkt` and `cnf.jkt` carry).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A DPoP proof JWT (RFC 9449 §4.2) for one request. `access_token` adds `ath` (resource
    /// requests, §7.1); `nonce` is the server's latest `DPoP-Nonce` (§8), when it gave one.
    pub fn proof(
        &self,
        method: &str,
        url: &Url,
        nonce: Option<&str>,
        access_token: Option<&[u8]>,
    ) -> Result<String, DpopError> {
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"{ALG}","jwk":{}}}"#, self.jwk);
        let mut claims = serde_json::Map::new();
        // A unique jti per proof lets servers detect replays (§4.2, §11.1).
        claims.insert(
            "jti".into(),
            URL_SAFE_NO_PAD
                .encode(crate::secret::random_array::<16>())
                .into(),
        );
        claims.insert("htm".into(), method.into());
        claims.insert("htu".into(), htu(url).into());
        claims.insert("iat".into(), unix_now().into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        if let Some(t) = access_token {
            claims.insert(
                "ath".into(),
                URL_SAFE_NO_PAD.encode(Sha256::digest(t)).into(),
            );
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string())
        );
        // The FIXED encoding is already JWS's r ‖ s (RFC 7518 §3.4).
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| DpopError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

/// The RFC 7638 thumbprint of a sealed (PKCS#8) key.
pub fn thumbprint_of(pkcs8: &[u8]) -> Result<String, DpopError> {
    Ok(DpopKey::from_pkcs8(pkcs8)?.thumbprint)
}

fn jwk_json(x: &[u8], y: &[u8]) -> String {
    format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    )
}

/// RFC 9449 §4.2: the target URI without query and fragment.
pub fn htu(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The newest `DPoP-Nonce` each server gave us (RFC 9449 §8, §9), by endpoint (the `htu`):
/// a token endpoint and an MCP server on one origin still keep their own.
#[derive(Default)]
pub struct Nonces {
    by_endpoint: Mutex<HashMap<String, String>>,
}

impl Nonces {
    pub fn get(&self, url: &Url) -> Option<String> {
        let m = self.by_endpoint.lock().ok()?;
        m.get(&htu(url)).cloned()
    }

    /// Remembers the response's `DPoP-Nonce`, if it carries a well-formed one; `true` if so.
    pub fn remember(&self, url: &Url, headers: &reqwest::header::HeaderMap) -> bool {
        let Some(n) = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // §8.1: nonce = 1*NQCHAR, where NQCHAR is %x21 / %x23-5B / %x5D-7E.
        let valid = !n.is_empty()
            && n.len() <= MAX_NONCE_LEN
            && n.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            return false;
        }
        if let Ok(mut m) = self.by_endpoint.lock() {
            if m.len() >= MAX_NONCE_ENDPOINTS {
                m.clear();
            }
            m.insert(htu(url), n.to_owned());
        }
        true
    }
}

/// A resource server's 401 names this DPoP error (RFC 9449 §7.1, §9), in any of its
/// `WWW-Authenticate` challenges (a server may offer `Bearer …, DPoP error="…"` in one
/// header). The error codes are only defined for the DPoP scheme.
pub fn resource_error(status: u16, headers: &reqwest::header::HeaderMap, error: &str) -> bool {
    let wanted = format!("error=\"{error}\"");
    status == 401
        && headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("dpop") && v.contains(&wanted))
}

/// The resource server refused the proof, not the token (a nonce challenge or a bad proof):
/// a refresh would not help.
pub fn proof_rejected(status: u16, headers: &reqwest::header::HeaderMap) -> bool {
    resource_error(status, headers, "use_dpop_nonce")
        || resource_error(status, headers, "invalid_dpop_proof")
}

/// A resource server's nonce challenge (RFC 9449 §9).
pub fn resource_wants_nonce(status: u16, headers: &reqwest::header::HeaderMap) -> bool {
    resource_error(status, headers, "use_dpop_nonce")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn b64json(s: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn thumbprint_matches_rfc_9449_example() {
        // RFC 9449 §6.1: the §4.1 example key's JWK SHA-256 thumbprint.
        let x = URL_SAFE_NO_PAD
            .decode("l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA")
            .unwrap();
        let jwk = jwk_json(&x, &y);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes())),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn proofs_verify_and_carry_the_request_binding() {
        let pkcs8 = generate().unwrap();
        let key = DpopKey::from_pkcs8(pkcs8.expose_secret()).unwrap();
        let url = Url::parse("https://rs.example/mcp/x?secret=1#frag").unwrap();
        let p = key
            .proof("POST", &url, Some("n-1"), Some(b"access-token"))
            .unwrap();
        let parts: Vec<&str> = p.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = b64json(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        // Only the public key: no `d`.
        assert!(header["jwk"].get("d").is_none());
        let claims = b64json(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://rs.example/mcp/x");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"access-token"))
        );
        assert!(claims["iat"].as_u64().unwrap() > 1_700_000_000);
        // The signature verifies under the key in the header.
        let jwk = &header["jwk"];
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        // The thumbprint is of that key, and every proof has its own jti.
        let canonical = jwk_json(&point[1..33], &point[33..]);
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
        let again = key.proof("POST", &url, None, None).unwrap();
        let c2 = b64json(again.split('.').nth(1).unwrap());
        assert_ne!(c2["jti"], claims["jti"]);
        assert!(c2.get("nonce").is_none() && c2.get("ath").is_none());
    }

    #[test]
    fn a_corrupt_key_is_refused() {
        assert!(matches!(
            DpopKey::from_pkcs8(b"not a key"),
            Err(DpopError::BadKey)
        ));
    }

    #[test]
    fn nonces_are_kept_per_endpoint_and_validated() {
        let n = Nonces::default();
        let a = Url::parse("https://as.example/token").unwrap();
        let a2 = Url::parse("https://as.example/token?q#f").unwrap();
        let b = Url::parse("https://as.example/mcp").unwrap();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("dpop-nonce", "eyJ7S_zG.eyJH0-Z.HX4w-7v".parse().unwrap());
        assert!(n.remember(&a, &h));
        assert_eq!(n.get(&a2).as_deref(), Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        assert_eq!(n.get(&b), None);
        // A quote or a space is not an NQCHAR: not remembered, the old nonce stays.
        h.insert("dpop-nonce", "a\"b".parse().unwrap());
        assert!(!n.remember(&a, &h));
        h.insert("dpop-nonce", "a b".parse().unwrap());
        assert!(!n.remember(&a, &h));
        assert_eq!(n.get(&a).as_deref(), Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
    }

    #[test]
    fn resource_nonce_challenges_are_recognised() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "www-authenticate",
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#
                .parse()
                .unwrap(),
        );
        assert!(resource_wants_nonce(401, &h));
        assert!(!resource_wants_nonce(403, &h));
        // Offered beside Bearer in one header.
        h.insert(
            "www-authenticate",
            r#"Bearer realm="mcp", DPoP algs="ES256", error="use_dpop_nonce""#
                .parse()
                .unwrap(),
        );
        assert!(resource_wants_nonce(401, &h));
        h.insert(
            "www-authenticate",
            r#"Bearer error="invalid_token""#.parse().unwrap(),
        );
        assert!(!resource_wants_nonce(401, &h));
        h.insert(
            "www-authenticate",
            r#"DPoP error="invalid_token""#.parse().unwrap(),
        );
        assert!(!resource_wants_nonce(401, &h));
    }
}
