//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay in `cargo test`.
//! Each takes arbitrary bytes and must never panic.

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use serde_json::Value;

use crate::proxy::jsonrpc::{InspectError, Message};
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

/// The proxy's JSON-RPC inspection: bodies agents send to `/mcp/{service}`. Also a
/// differential check: the one-pass reader must answer as the two-pass reader it replaced
/// (`jsonrpc_reference`), except on serde_json's private raw-value marker key, which `Value`
/// treats specially (it unwraps a string value as nested JSON) and the one-pass reader treats
/// as an ordinary key; both refuse such messages or read the same tool.
pub fn jsonrpc(data: &[u8]) {
    let new = crate::proxy::jsonrpc::inspect(data);
    if let Ok(crate::proxy::jsonrpc::Message::Request { method, target, .. }) = &new {
        // A request that names a tool always carries the name the policy will check.
        if method == "tools/call" {
            assert!(target.is_some());
        }
    }
    let old = jsonrpc_reference(data);
    if data.windows(21).any(|w| w == b"$serde_json::private:") {
        if let (Ok(a), Ok(b)) = (&new, &old) {
            assert_eq!(a, b);
        }
        return;
    }
    assert_eq!(new, old, "{:?}", String::from_utf8_lossy(data));
}

// The two-pass reader the proxy used before (a strict key pass, then a `Value` tree), kept
// as the oracle of the differential check in `jsonrpc`.

/// Upstreams may read JSON differently from us: last-wins or first-wins duplicate keys, and
/// (Go's encoding/json) case-insensitive, Unicode-folded key matching. Refusing every
/// duplicate, and every key that folds to one the policy reads without being it, leaves one
/// reading (the go-sdk's GHSA-wvj2-96wp-fq3f was exactly this).
fn ref_unambiguous(body: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Strict;
    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Strict {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                // Folding itself is unchanged from the two-pass reader, so it is shared.
                let folded = crate::proxy::jsonrpc::fold(&key);
                let sensitive = crate::proxy::jsonrpc::SENSITIVE;
                if !seen.insert(folded.clone())
                    || (sensitive.contains(&folded.as_str()) && folded != key)
                {
                    return Err(serde::de::Error::custom("ambiguous key"));
                }
                map.next_value_seed(Strict)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Strict)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let _ = IgnoredAny;
    let mut de = serde_json::Deserializer::from_slice(body);
    Strict.deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// The two-pass reader's answer for `body`.
pub fn jsonrpc_reference(body: &[u8]) -> Result<Message, InspectError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| InspectError::NotJson)?;
    if !ref_unambiguous(body) {
        return Err(InspectError::AmbiguousKey);
    }
    let obj = match v {
        Value::Object(o) => o,
        Value::Array(_) => return Err(InspectError::Batch),
        _ => return Err(InspectError::NotJsonRpc),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(InspectError::NotJsonRpc);
    }
    let Some(method) = obj.get("method") else {
        return if obj.contains_key("result") || obj.contains_key("error") {
            Ok(Message::Response)
        } else {
            Err(InspectError::NotJsonRpc)
        };
    };
    let method = method.as_str().ok_or(InspectError::NotJsonRpc)?.to_owned();
    let Some(id) = obj.get("id") else {
        // Without an id a generic JSON-RPC server still runs the method: a `tools/call`
        // notification must not slip past the tool check.
        if !method.starts_with("notifications/") {
            return Err(InspectError::NotANotification);
        }
        return Ok(Message::Notification { method });
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return Err(InspectError::NotJsonRpc);
    }
    let field = match method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    let target = match field {
        Some(f) => Some(
            obj.get("params")
                .and_then(|p| p.get(f))
                .and_then(Value::as_str)
                .ok_or_else(|| InspectError::MissingTarget(method.clone(), f))?
                .to_owned(),
        ),
        None => None,
    };
    Ok(Message::Request {
        id: id.clone(),
        method,
        target,
    })
}

/// Splits fuzz input into a header line and a body, as a webhook request carries them.
fn header_and_body(data: &[u8]) -> (Option<&str>, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    }
}

/// GitHub webhooks: the signature check and the payload parser of `/webhooks/github`.
pub fn github_webhook(data: &[u8]) {
    let (sig, body) = header_and_body(data);
    // Random input never carries a valid HMAC under this key.
    assert!(crate::webhooks::github::verify(b"fuzz secret", body, sig).is_err());
    if let Ok(crate::webhooks::github::GithubEvent::AuthorizationRevoked { user_id }) =
        crate::webhooks::github::parse("github_app_authorization", body)
    {
        assert!(!user_id.is_empty() && user_id.bytes().all(|b| b.is_ascii_digit()));
    }
}

/// Slack events: the signature check (timestamp window included) and the payload parser.
pub fn slack_webhook(data: &[u8]) {
    let (line, body) = header_and_body(data);
    let (ts, sig) = match line.and_then(|l| l.split_once(' ')) {
        Some((t, s)) => (Some(t), Some(s)),
        None => (line, None),
    };
    assert!(crate::webhooks::slack::verify(b"fuzz secret", ts, sig, body, 1_700_000_000).is_err());
    if let Ok(crate::webhooks::slack::SlackEvent::TokensRevoked { team, users, .. }) =
        crate::webhooks::slack::parse(body)
    {
        assert!(!team.is_empty() && users.iter().all(|u| !u.is_empty()));
    }
}

/// Security Event Tokens: the JWS header parser, the signature check, and the claims parser
/// (run on the raw input too, since it only ever sees verified payloads in the product).
pub fn security_event_token(data: &[u8]) {
    use crate::webhooks::risc;
    let rx = crate::config::RiscReceiver {
        #[allow(clippy::expect_used)] // invariant: a constant URL.
        jwks_uri: url::Url::parse("https://issuer.example/jwks").expect("url"),
        issuer: "https://issuer.example/".into(),
        audiences: vec!["client".into()],
    };
    if let Ok(jws) = risc::Jws::parse(data) {
        let key = crate::webhooks::jwks::Jwk::P256 {
            point: [&[4u8][..], &[7u8; 64][..]].concat(),
        };
        // Not a point on the curve, so nothing verifies.
        assert!(jws.verify(&key).is_err());
    }
    if let Ok(set) = risc::check_claims(data, &rx, 1_700_000_000) {
        assert!(!set.jti.is_empty() && !set.events.is_empty());
    }
}

/// JSON Web Key Sets fetched from a provider's `jwks_uri`.
pub fn jwks(data: &[u8]) {
    if let Ok(keys) = crate::webhooks::jwks::parse(data) {
        for k in keys.values() {
            if let crate::webhooks::jwks::Jwk::P256 { point } = k {
                assert_eq!(point.len(), 65);
            }
            for alg in [
                crate::webhooks::jwks::Alg::Rs256,
                crate::webhooks::jwks::Alg::Es256,
            ] {
                assert!(!k.verify(alg, b"fuzz", &[0u8; 64]));
            }
        }
    }
}

/// What a token endpoint answers (RFC 6749 §5.1/§5.2 bodies, each provider's quirks) and the
/// DPoP headers servers send back (`DPoP-Nonce`, `WWW-Authenticate: DPoP …`). The first byte
/// picks the status and quirks; the rest is the body, and also the header values.
pub fn token_response(data: &[u8]) {
    use crate::oauth::token::{Quirks, TokenError, parse};
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let status = [200, 400, 401, 500][usize::from(sel & 3)];
    let quirks = Quirks {
        expiry_optional: sel & 4 != 0,
        slack: sel & 8 != 0,
    };
    match parse(status, body, quirks) {
        Ok(t) => {
            // Only a 2xx is ever a success.
            assert!(status == 200 && !t.access_token.expose_secret().is_empty());
        }
        Err(TokenError::Refused { error, description }) => {
            // Escaped before anything logs or shows them: no control characters survive.
            assert!(!error.chars().any(char::is_control));
            assert!(description.is_none_or(|d| !d.chars().any(char::is_control)));
        }
        Err(_) => {}
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_bytes(body) {
        headers.insert("dpop-nonce", v.clone());
        headers.insert("www-authenticate", v);
    }
    let nonces = crate::oauth::dpop::Nonces::default();
    #[allow(clippy::expect_used)] // invariant: a constant URL.
    let url = url::Url::parse("https://rs.example/mcp").expect("url");
    if nonces.remember(&url, &headers) {
        let n = nonces.get(&url).unwrap_or_default();
        assert!(!n.is_empty() && !n.contains('"') && !n.contains(' '));
    }
    let _ = crate::oauth::dpop::resource_wants_nonce(u16::from(sel) + 300, &headers);
}
