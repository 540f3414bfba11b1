//! Agent tokens: `sga_` + 43 base64url characters (256 random bits) + 8 hex characters of
//! checksum. The prefix lets secret scanners find leaked tokens; the checksum lets the
//! gateway refuse mistyped or made-up tokens without a lookup. Only the SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::{SecretBytes, hex, random_array};

pub const PREFIX: &str = "sga_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 8;
pub const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;

fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"scopegate-agent-token:")
        .chain_update(body)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(hex(&digest[..CHECK_LEN / 2]).as_bytes());
    out
}

pub fn generate() -> SecretBytes {
    let body = URL_SAFE_NO_PAD.encode(random_array::<32>());
    let mut token = Vec::with_capacity(TOKEN_LEN);
    token.extend_from_slice(PREFIX.as_bytes());
    token.extend_from_slice(body.as_bytes());
    token.extend_from_slice(&checksum(body.as_bytes()));
    SecretBytes::new(token)
}

/// Shape and checksum only; says nothing about whether the token is known.
pub fn well_formed(token: &[u8]) -> bool {
    if token.len() != TOKEN_LEN || !token.starts_with(PREFIX.as_bytes()) {
        return false;
    }
    let body = &token[PREFIX.len()..PREFIX.len() + BODY_LEN];
    let check = &token[PREFIX.len() + BODY_LEN..];
    body.iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            checksum(body).as_slice(),
            check,
        ))
}

/// How the token is stored and looked up (I11).
pub fn lookup_hash(token: &[u8]) -> String {
    hex(&lookup_digest(token))
}

/// `lookup_hash` before it is spelled in hex: the in-memory cache's key.
pub fn lookup_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_typos_are_not() {
        let t = generate();
        let s = std::str::from_utf8(t.expose_secret()).unwrap().to_owned();
        assert_eq!(s.len(), TOKEN_LEN);
        assert!(s.starts_with("sga_") && well_formed(s.as_bytes()));
        let mut typo = s.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(&typo));
        assert!(!well_formed(b"sga_short"));
        assert!(!well_formed(&s.as_bytes()[..TOKEN_LEN - 1]));
        assert_ne!(generate(), generate());
    }
}
