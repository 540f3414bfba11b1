//! PKCE S256 (RFC 7636 §4.1–4.2) and the `state` value. Both are 256 bits from the OS CSPRNG,
//! base64url without padding (43 characters, inside RFC 7636's 43..=128 unreserved range).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::{SecretBytes, hex, random_array};

/// A fresh random 256-bit token as base64url text: PKCE verifiers, `state`, session ids.
pub fn random_token() -> SecretBytes {
    SecretBytes::new(URL_SAFE_NO_PAD.encode(random_array::<32>()).into_bytes())
}

/// `BASE64URL(SHA256(verifier))` — the only method we send (`plain` is never used).
pub fn s256_challenge(verifier: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier))
}

/// How a bearer value (state, session id, login token) is stored: its SHA-256, hex. The value
/// itself is never stored, so a copy of the store cannot replay it.
pub fn lookup_hash(value: &[u8]) -> String {
    hex(&Sha256::digest(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            s256_challenge(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_are_43_url_safe_chars_and_distinct() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert!(
            a.expose_secret()
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        );
        assert_ne!(a, b);
    }
}
