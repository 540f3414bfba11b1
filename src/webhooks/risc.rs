//! Security Event Tokens (RFC 8417) pushed per RFC 8935: a compact JWS whose header names an
//! allowed algorithm (RS256, ES256 — never `none` or an HMAC a public key could be abused as)
//! and a `kid`; the signature is checked against the provider's JWKS before the claims are
//! read; then `iss`, `aud`, `iat` and `jti` (RFC 8417 §2.2), and the events Google's
//! Cross-Account Protection sends (developers.google.com/identity/protocols/risc), whose
//! subject is an issuer + subject pair (`iss-sub` / RFC 9493 `iss_sub`).

use base64::Engine;
use serde_json::{Map, Value};

use super::jwks::{Alg, Jwk};
use crate::config::RiscReceiver;
use crate::oauth::token::identifier;

/// SETs larger than this are refused unread.
pub const MAX_SET_BYTES: usize = 64 * 1024;
/// A SET issued longer ago than this is refused, which bounds how long `jti`s are remembered.
pub const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
const MAX_SKEW_SECS: i64 = 5 * 60;
const MAX_EVENTS: usize = 16;

/// The RFC 8935 §2.4 error codes, sent as `{"err": …, "description": …}` with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("{0}")]
    InvalidKey(&'static str),
    #[error("the signature does not verify")]
    AuthenticationFailed,
    #[error("the issuer is not the one configured for this provider")]
    InvalidIssuer,
    #[error("the audience does not name this receiver")]
    InvalidAudience,
}

impl SetError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::AuthenticationFailed => "authentication_failed",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
        }
    }
}

/// A SET split and its header checked; the payload is not readable until `verify`.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Alg,
    pub kid: String,
    signing_input: &'a [u8],
    payload_b64: &'a [u8],
    signature: Vec<u8>,
}

fn b64(s: &[u8]) -> Result<Vec<u8>, SetError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| SetError::InvalidRequest("not base64url"))
}

/// The payload of a SET whose signature verified.
pub struct Verified(Vec<u8>);

impl<'a> Jws<'a> {
    /// Splits a compact JWS (RFC 7515 §7.1) and checks its protected header.
    pub fn parse(token: &'a [u8]) -> Result<Self, SetError> {
        if token.len() > MAX_SET_BYTES {
            return Err(SetError::InvalidRequest("the SET is too large"));
        }
        let token = token.trim_ascii();
        let mut parts = token.split(|&b| b == b'.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SetError::InvalidRequest("not a compact JWS"));
        };
        let header: Value = serde_json::from_slice(&b64(h)?)
            .map_err(|_| SetError::InvalidRequest("the JWS header is not JSON"))?;
        let header = header
            .as_object()
            .ok_or(SetError::InvalidRequest("the JWS header is not an object"))?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Alg::Rs256,
            Some("ES256") => Alg::Es256,
            _ => return Err(SetError::InvalidKey("the algorithm is not RS256 or ES256")),
        };
        // RFC 7515 §4.1.11: extensions we do not understand must be refused.
        if header.contains_key("crit") {
            return Err(SetError::InvalidRequest(
                "critical header extensions are not supported",
            ));
        }
        // RFC 8417 §2.3 explicit typing keeps an ID token (same issuer, same keys) from passing
        // as a SET. Google does not document `typ` on its SETs, so a missing one is tolerated:
        // the required `events` claim tells the two apart too (§4.3). A wrong one is refused.
        if let Some(typ) = header.get("typ") {
            let t = typ.as_str().unwrap_or("").to_ascii_lowercase();
            if t != "secevent+jwt" && t != "application/secevent+jwt" {
                return Err(SetError::InvalidRequest("typ is not secevent+jwt"));
            }
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .and_then(identifier)
            .ok_or(SetError::InvalidKey("the JWS header names no kid"))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(Self {
            alg,
            kid,
            signing_input,
            payload_b64: p,
            signature: b64(s)?,
        })
    }

    /// Checks the signature with the key the header's `kid` named.
    pub fn verify(&self, key: &Jwk) -> Result<Verified, SetError> {
        if !key.verify(self.alg, self.signing_input, &self.signature) {
            return Err(SetError::AuthenticationFailed);
        }
        Ok(Verified(b64(self.payload_b64)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The account's tokens, sessions or the account itself are gone: clean up.
    Revoke(&'static str),
    /// Google's test event.
    Verification,
    /// Anything else (acknowledged, recorded, no action).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEvent {
    pub kind: EventKind,
    /// The `sub` of an `iss-sub` subject issued by the configured issuer.
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub jti: String,
    pub iat: i64,
    pub events: Vec<SetEvent>,
}

const REVOKING: [(&str, &str); 5] = [
    (
        "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked",
        "tokens-revoked",
    ),
    (
        "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
        "sessions-revoked",
    ),
    (
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        "account-disabled",
    ),
    (
        "https://schemas.openid.net/secevent/risc/event-type/account-purged",
        "account-purged",
    ),
    (
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
        "session-revoked",
    ),
];
const VERIFICATION: &str = "https://schemas.openid.net/secevent/risc/event-type/verification";

impl Verified {
    pub fn claims(&self, rx: &RiscReceiver, now: i64) -> Result<Set, SetError> {
        check_claims(&self.0, rx, now)
    }
}

/// Reads and checks the claims of a verified payload (separate for the fuzz target).
pub(crate) fn check_claims(payload: &[u8], rx: &RiscReceiver, now: i64) -> Result<Set, SetError> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|_| SetError::InvalidRequest("the SET claims are not JSON"))?;
    let c = v
        .as_object()
        .ok_or(SetError::InvalidRequest("the SET claims are not an object"))?;
    if c.get("iss").and_then(Value::as_str) != Some(rx.issuer.as_str()) {
        return Err(SetError::InvalidIssuer);
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => rx.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| rx.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(SetError::InvalidAudience);
    }
    let iat = c
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(SetError::InvalidRequest("iat is missing"))?;
    if iat > now.saturating_add(MAX_SKEW_SECS) {
        return Err(SetError::InvalidRequest("iat is in the future"));
    }
    if iat < now.saturating_sub(MAX_AGE_SECS) {
        return Err(SetError::InvalidRequest("the SET is older than seven days"));
    }
    let jti = c
        .get("jti")
        .and_then(Value::as_str)
        .and_then(identifier)
        .ok_or(SetError::InvalidRequest("jti is missing"))?;
    let events = c
        .get("events")
        .and_then(Value::as_object)
        .filter(|e| !e.is_empty() && e.len() <= MAX_EVENTS)
        .ok_or(SetError::InvalidRequest("events is missing or malformed"))?;
    let mut out = Vec::new();
    for (uri, body) in events {
        let body = body.as_object().ok_or(SetError::InvalidRequest(
            "an event payload is not an object",
        ))?;
        let kind = if let Some((_, short)) = REVOKING.iter().find(|(u, _)| u == uri) {
            EventKind::Revoke(short)
        } else if uri == VERIFICATION {
            EventKind::Verification
        } else {
            // Escaped where it is written (the audit log escapes every field).
            EventKind::Other(uri.chars().take(200).collect())
        };
        let subject = body
            .get("subject")
            .and_then(Value::as_object)
            .or_else(|| c.get("sub_id").and_then(Value::as_object));
        out.push(SetEvent {
            kind,
            sub: subject.and_then(|s| iss_sub(s, rx)),
        });
    }
    Ok(Set {
        jti,
        iat,
        events: out,
    })
}

/// An `iss-sub` subject (Google's spelling; `iss_sub` in RFC 9493) of the configured issuer.
fn iss_sub(s: &Map<String, Value>, rx: &RiscReceiver) -> Option<String> {
    let format = s
        .get("subject_type")
        .or_else(|| s.get("format"))
        .and_then(Value::as_str)?;
    if format != "iss-sub" && format != "iss_sub" {
        return None;
    }
    if s.get("iss").and_then(Value::as_str) != Some(rx.issuer.as_str()) {
        return None;
    }
    s.get("sub").and_then(Value::as_str).and_then(identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx() -> RiscReceiver {
        RiscReceiver {
            jwks_uri: url::Url::parse("https://www.googleapis.com/oauth2/v3/certs").unwrap(),
            issuer: "https://accounts.google.com/".into(),
            audiences: vec!["123456789-abcedfgh.apps.googleusercontent.com".into()],
        }
    }

    /// Google's documented example SET claims.
    const GOOGLE_EXAMPLE: &str = r#"{
      "iss": "https://accounts.google.com/",
      "aud": "123456789-abcedfgh.apps.googleusercontent.com",
      "iat": 1508184845,
      "jti": "756E69717565206964656E746966696572",
      "events": {
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {
          "subject": {"subject_type": "iss-sub", "iss": "https://accounts.google.com/", "sub": "7375626A656374"},
          "reason": "hijacking"
        }
      }
    }"#;

    #[test]
    fn googles_example_is_read() {
        let s = check_claims(GOOGLE_EXAMPLE.as_bytes(), &rx(), 1508184845 + 60).unwrap();
        assert_eq!(s.jti, "756E69717565206964656E746966696572");
        assert_eq!(
            s.events,
            vec![SetEvent {
                kind: EventKind::Revoke("account-disabled"),
                sub: Some("7375626A656374".into())
            }]
        );
    }

    #[test]
    fn claims_are_checked() {
        let now = 1508184845 + 60;
        let with = |from: &str, to: &str| GOOGLE_EXAMPLE.replace(from, to);
        let cases = [
            (
                with(
                    "\"iss\": \"https://accounts.google.com/\"",
                    "\"iss\": \"https://evil.example/\"",
                ),
                SetError::InvalidIssuer,
            ),
            (
                with(
                    "\"aud\": \"123456789-abcedfgh.apps.googleusercontent.com\"",
                    "\"aud\": \"other\"",
                ),
                SetError::InvalidAudience,
            ),
            (
                with(
                    "\"aud\": \"123456789-abcedfgh.apps.googleusercontent.com\"",
                    "\"aud\": [\"a\", \"123456789-abcedfgh.apps.googleusercontent.com\"]",
                ),
                SetError::InvalidRequest(""),
            ),
            (
                with("\"iat\": 1508184845", "\"iat\": \"1508184845\""),
                SetError::InvalidRequest("iat is missing"),
            ),
            (
                with("\"jti\": \"756E69717565206964656E746966696572\",", ""),
                SetError::InvalidRequest("jti is missing"),
            ),
        ];
        for (text, want) in cases {
            let got = check_claims(text.as_bytes(), &rx(), now);
            if want == SetError::InvalidRequest("") {
                assert!(got.is_ok(), "an array aud naming us is fine: {got:?}");
            } else {
                assert_eq!(got.unwrap_err(), want, "{text}");
            }
        }
        assert!(
            check_claims(
                GOOGLE_EXAMPLE.as_bytes(),
                &rx(),
                1508184845 + MAX_AGE_SECS + 1
            )
            .is_err()
        );
        assert!(check_claims(GOOGLE_EXAMPLE.as_bytes(), &rx(), 1508184845 - 301).is_err());
        // A subject of another issuer names nobody here.
        let other = with(
            "\"iss\": \"https://accounts.google.com/\", \"sub\"",
            "\"iss\": \"https://x.example/\", \"sub\"",
        );
        assert_eq!(
            check_claims(other.as_bytes(), &rx(), now).unwrap().events[0].sub,
            None
        );
    }

    #[test]
    fn headers_are_checked_before_anything_else() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let tok = |h: &str| format!("{}.{}.{}", enc(h), enc("{}"), enc("sig"));
        let ok = tok(r#"{"alg":"RS256","kid":"k1","typ":"secevent+jwt"}"#);
        let jws = Jws::parse(ok.as_bytes()).unwrap();
        assert_eq!((jws.alg, jws.kid.as_str()), (Alg::Rs256, "k1"));
        assert!(Jws::parse(tok(r#"{"alg":"ES256","kid":"k1"}"#).as_bytes()).is_ok());
        for (h, code) in [
            (r#"{"alg":"none","kid":"k1"}"#, "invalid_key"),
            (r#"{"alg":"HS256","kid":"k1"}"#, "invalid_key"),
            (r#"{"alg":"RS256"}"#, "invalid_key"),
            (
                r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
                "invalid_request",
            ),
            (
                r#"{"alg":"RS256","kid":"k1","crit":["b64"]}"#,
                "invalid_request",
            ),
        ] {
            assert_eq!(
                Jws::parse(tok(h).as_bytes()).unwrap_err().code(),
                code,
                "{h}"
            );
        }
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.c2ln"] {
            assert_eq!(
                Jws::parse(bad.as_bytes()).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }
}
