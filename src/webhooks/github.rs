//! GitHub webhooks: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` under the
//! app's webhook secret, compared in constant time before the body is parsed
//! (docs.github.com, "Validating webhook deliveries"). The event that matters is
//! `github_app_authorization` with `action: revoked`: the user (`sender.id`) revoked the app's
//! authorization, so every token the app holds for them is dead.

use serde_json::Value;

/// Why a delivery is not accepted. No variant carries the signature or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubRefusal {
    #[error("no X-Hub-Signature-256 header")]
    Unsigned,
    #[error("the signature does not match")]
    BadSignature,
}

/// Checks `X-Hub-Signature-256` against the raw body.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), GithubRefusal> {
    let header = header.ok_or(GithubRefusal::Unsigned)?;
    let hex = header
        .strip_prefix("sha256=")
        .ok_or(GithubRefusal::BadSignature)?;
    if super::hmac_sha256_matches(secret, &[body], hex) {
        Ok(())
    } else {
        Err(GithubRefusal::BadSignature)
    }
}

/// What a verified delivery asks of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubEvent {
    /// The user with this numeric id revoked the app's authorization.
    AuthorizationRevoked { user_id: String },
    /// Anything else: acknowledged, nothing done.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubParseError {
    #[error("the payload is not a JSON object")]
    NotJson,
    #[error("the revocation names no numeric sender.id")]
    NoSender,
}

/// Parses a verified body; `event` is the `X-GitHub-Event` header.
pub fn parse(event: &str, body: &[u8]) -> Result<GithubEvent, GithubParseError> {
    if event != "github_app_authorization" {
        return Ok(GithubEvent::Ignored);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| GithubParseError::NotJson)?;
    if !v.is_object() {
        return Err(GithubParseError::NotJson);
    }
    if v.get("action").and_then(Value::as_str) != Some("revoked") {
        return Ok(GithubEvent::Ignored);
    }
    let id = v
        .get("sender")
        .and_then(|s| s.get("id"))
        .and_then(Value::as_u64)
        .ok_or(GithubParseError::NoSender)?;
    Ok(GithubEvent::AuthorizationRevoked {
        user_id: id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published test values ("Validating webhook deliveries", "Testing the webhook
    /// payload validation").
    #[test]
    fn githubs_published_test_vector_passes() {
        let secret = b"It's a Secret to Everybody";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify(secret, b"Hello, World!", Some(sig)), Ok(()));
        assert_eq!(
            verify(secret, b"Hello, World?", Some(sig)),
            Err(GithubRefusal::BadSignature)
        );
        assert_eq!(
            verify(b"another secret", b"Hello, World!", Some(sig)),
            Err(GithubRefusal::BadSignature)
        );
        // The SHA-1 header's format, or a bare hex, is not accepted.
        assert_eq!(
            verify(secret, b"Hello, World!", Some(&sig[7..])),
            Err(GithubRefusal::BadSignature)
        );
        assert_eq!(
            verify(secret, b"Hello, World!", None),
            Err(GithubRefusal::Unsigned)
        );
    }

    #[test]
    fn the_revocation_event_names_the_sender() {
        let body =
            br#"{"action":"revoked","sender":{"login":"octocat","id":583231,"type":"User"}}"#;
        assert_eq!(
            parse("github_app_authorization", body),
            Ok(GithubEvent::AuthorizationRevoked {
                user_id: "583231".into()
            })
        );
        assert_eq!(parse("push", body), Ok(GithubEvent::Ignored));
        assert_eq!(
            parse("github_app_authorization", br#"{"action":"created"}"#),
            Ok(GithubEvent::Ignored)
        );
        assert_eq!(
            parse(
                "github_app_authorization",
                br#"{"action":"revoked","sender":{"id":"1"}}"#
            ),
            Err(GithubParseError::NoSender)
        );
        assert_eq!(
            parse("github_app_authorization", b"[]"),
            Err(GithubParseError::NotJson)
        );
    }
}
