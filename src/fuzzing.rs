//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay in `cargo test`.
//! Each takes arbitrary bytes and must never panic.

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::vault::seal;

/// The decoders that read bytes from `secrets.redb`: sealed values and the vault header.
pub fn sealed(data: &[u8]) {
    if let Ok(s) = seal::decode(data) {
        assert_eq!(1 + seal::NONCE_LEN + s.ciphertext_and_tag.len(), data.len());
    }
    let cipher = XChaCha20Poly1305::new(&[0x42u8; 32].into());
    let loc = seal::Location {
        table: "secrets",
        record: "secret/fuzz",
        field: "api_key",
    };
    // Random bytes never authenticate; the framing paths before the tag check must not panic.
    assert!(seal::open(&cipher, &loc, data).is_err());
    if let Ok(h) = seal::parse_header(data) {
        assert!(
            h.salt.len() >= 16 && h.authenticated_prefix.len() + h.wrapped_key.len() == data.len()
        );
    }
}

/// The config parser: text from `scopegate.toml`.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = crate::config::Config::parse(text, "fuzz.toml")
    {
        // Errors are one line that names the file.
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.toml: "));
    }
}

/// The OAuth callback parser: the raw query string of `/oauth/callback`.
pub fn callback(data: &[u8]) {
    if let Ok(q) = std::str::from_utf8(data)
        && let Ok(c) = crate::oauth::callback::parse(q)
    {
        for v in [c.state.as_deref(), c.iss.as_deref()].into_iter().flatten() {
            assert!(!v.is_empty() && v.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }
}

/// The proxy's JSON-RPC inspection: bodies agents send to `/mcp/{service}`.
pub fn jsonrpc(data: &[u8]) {
    if let Ok(crate::proxy::jsonrpc::Message::Request { method, target, .. }) =
        crate::proxy::jsonrpc::inspect(data)
    {
        // A request that names a tool always carries the name the policy will check.
        if method == "tools/call" {
            assert!(target.is_some());
        }
    }
}
