//! Token endpoint responses (RFC 6749 §5.1, §5.2), validated before anything is stored.
//! Provider quirks: GitHub and Slack report errors in a 200 body; Slack puts user tokens under
//! `authed_user`; GitHub OAuth Apps and Slack issue tokens without `expires_in`.

use serde_json::Value;

use crate::secret::{AccessToken, RefreshToken};

/// Token responses larger than this are refused unread.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// Tokens may come without `expires_in` (they do not expire).
    pub expiry_optional: bool,
    /// Slack: `{"ok": false}` is an error; user tokens live under `authed_user`.
    pub slack: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenType {
    Bearer,
    DPoP,
}

#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    pub token_type: TokenType,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<RefreshToken>,
    /// Space-separated scopes the server says it granted, when it says.
    pub scope: Option<Vec<String>>,
    /// The provider's id for the account (Slack `authed_user.id`, the OIDC id_token `sub`;
    /// GitHub's comes from `GET /user`), when known.
    pub subject: Option<String>,
    /// Slack's workspace id (`team.id`).
    pub team: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token response is larger than 1 MiB")]
    TooLarge,
    #[error("the token response is not a JSON object")]
    NotJson,
    /// `error` and `error_description` from the server, already escaped and truncated.
    #[error("the authorization server refused: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the token response (HTTP {0}) is not a success and carries no error code")]
    HttpStatus(u16),
    #[error("the token response has no access_token")]
    MissingAccessToken,
    #[error("the token response has no token_type")]
    MissingTokenType,
    #[error("the token response has token_type {0:?}, which is not supported")]
    UnsupportedTokenType(String),
    #[error("the token response has no expires_in")]
    MissingExpiresIn,
    #[error("the token response has an invalid expires_in")]
    BadExpiresIn,
}

impl TokenError {
    /// The RFC 6749 §5.2 code, when the server sent one: refresh failure policy keys on it.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn short(s: &str) -> String {
    crate::store::audit::escape_untrusted(&s.chars().take(200).collect::<String>())
}

pub fn parse(status: u16, body: &[u8], quirks: Quirks) -> Result<TokenResponse, TokenError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(TokenError::TooLarge);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| TokenError::NotJson)?;
    let Value::Object(obj) = v else {
        return Err(TokenError::NotJson);
    };
    // An error member means failure whatever the status (GitHub and Slack answer 200).
    if let Some(err) = obj.get("error") {
        let error = err
            .as_str()
            .map(short)
            .unwrap_or_else(|| "(non-string error)".into());
        let description = obj
            .get("error_description")
            .and_then(Value::as_str)
            .map(short);
        return Err(TokenError::Refused { error, description });
    }
    if quirks.slack && obj.get("ok") == Some(&Value::Bool(false)) {
        return Err(TokenError::Refused {
            error: "unknown_error".into(),
            description: None,
        });
    }
    if !(200..300).contains(&status) {
        return Err(TokenError::HttpStatus(status));
    }
    // Slack v2: a user-token grant puts the token under `authed_user`.
    let (tok, subject) = match (
        quirks.slack,
        obj.get("access_token"),
        obj.get("authed_user"),
    ) {
        (true, None, Some(Value::Object(user))) => (
            user,
            user.get("id").and_then(Value::as_str).map(str::to_owned),
        ),
        _ => (
            &obj,
            obj.get("authed_user")
                .and_then(|u| u.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
    };
    let access = tok
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::MissingAccessToken)?;
    let token_type = match tok.get("token_type").and_then(Value::as_str) {
        None | Some("") => return Err(TokenError::MissingTokenType),
        Some(t) if t.eq_ignore_ascii_case("bearer") => TokenType::Bearer,
        // RFC 9449 §5: bound to the proof's key; sent only as `Authorization: DPoP`.
        Some(t) if t.eq_ignore_ascii_case("dpop") => TokenType::DPoP,
        // Slack's own token types are bearer tokens.
        Some("bot" | "user") if quirks.slack => TokenType::Bearer,
        Some(t) => return Err(TokenError::UnsupportedTokenType(short(t))),
    };
    let expires_in = match tok.get("expires_in") {
        None | Some(Value::Null) if quirks.expiry_optional => None,
        None | Some(Value::Null) => return Err(TokenError::MissingExpiresIn),
        Some(Value::Number(n)) => Some(n.as_u64().ok_or(TokenError::BadExpiresIn)?),
        // Some servers send the number as a string; only plain digits are accepted.
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(s.parse().map_err(|_| TokenError::BadExpiresIn)?)
        }
        Some(_) => return Err(TokenError::BadExpiresIn),
    };
    if expires_in.is_some_and(|e| e == 0 || e > MAX_LIFETIME_SECS) {
        return Err(TokenError::BadExpiresIn);
    }
    let refresh_token = tok
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| RefreshToken::new(s.as_bytes().to_vec()));
    let scope = tok.get("scope").and_then(Value::as_str).map(|s| {
        s.split([' ', ','])
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let team = obj
        .get("team")
        .and_then(|t| t.get("id"))
        .and_then(Value::as_str)
        .and_then(identifier);
    let subject = subject.as_deref().and_then(identifier).or_else(|| {
        obj.get("id_token")
            .and_then(Value::as_str)
            .and_then(id_token_sub)
    });
    Ok(TokenResponse {
        access_token: AccessToken::new(access.as_bytes().to_vec()),
        token_type,
        expires_in,
        refresh_token,
        scope,
        subject,
        team,
    })
}

/// Provider account ids are short printable strings; anything else is not recorded.
pub fn identifier(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    ok.then(|| s.to_owned())
}

/// The `sub` of an OIDC id_token, read as an identifier only. Its signature is not checked:
/// the token came in the token endpoint's TLS response straight from the issuer (OIDC Core
/// §3.1.3.7 item 6), and it decides no access — it only lets revocation events find the
/// connection.
fn id_token_sub(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Quirks = Quirks {
        expiry_optional: false,
        slack: false,
    };

    #[test]
    fn a_good_response() {
        let r = parse(200, br#"{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt","scope":"a b"}"#, STRICT).unwrap();
        assert_eq!(r.access_token.expose_secret(), b"at");
        assert_eq!(r.expires_in, Some(3600));
        assert_eq!(r.scope, Some(vec!["a".into(), "b".into()]));
        assert_eq!(r.refresh_token.unwrap().expose_secret(), b"rt");
        assert_eq!(r.token_type, TokenType::Bearer);
        // RFC 9449 §5: a DPoP-bound token says so (case-insensitively, like Bearer).
        let r = parse(
            200,
            br#"{"access_token":"at","token_type":"DPoP","expires_in":60}"#,
            STRICT,
        )
        .unwrap();
        assert_eq!(r.token_type, TokenType::DPoP);
        let r = parse(
            200,
            br#"{"access_token":"at","token_type":"dpop","expires_in":60}"#,
            STRICT,
        )
        .unwrap();
        assert_eq!(r.token_type, TokenType::DPoP);
    }

    #[test]
    fn every_malformed_response_is_a_clear_error() {
        let cases: Vec<(u16, &[u8], TokenError)> = vec![
            (200, br#"{"token_type":"Bearer","expires_in":1}"#, TokenError::MissingAccessToken),
            (200, br#"{"access_token":"at","expires_in":1}"#, TokenError::MissingTokenType),
            (200, br#"{"access_token":"at","token_type":"mac","expires_in":1}"#, TokenError::UnsupportedTokenType("mac".into())),
            (200, br#"{"access_token":"at","token_type":"Bearer"}"#, TokenError::MissingExpiresIn),
            (200, br#"{"access_token":"at","token_type":"Bearer","expires_in":-5}"#, TokenError::BadExpiresIn),
            (200, br#"{"access_token":"at","token_type":"Bearer","expires_in":"soon"}"#, TokenError::BadExpiresIn),
            (200, br#"{"access_token":"at","token_type":"Bearer","expires_in":1.5}"#, TokenError::BadExpiresIn),
            (200, br#"{"access_token":"at","token_type":"Bearer","expires_in":0}"#, TokenError::BadExpiresIn),
            (200, b"<html>oops</html>", TokenError::NotJson),
            (200, b"[1,2]", TokenError::NotJson),
            (500, br#"{"access_token":"at","token_type":"Bearer","expires_in":1}"#, TokenError::HttpStatus(500)),
            // GitHub: an error in a 200 body.
            (200, br#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#,
                TokenError::Refused { error: "bad_verification_code".into(), description: Some("The code passed is incorrect or expired.".into()) }),
            (400, br#"{"error":"invalid_grant"}"#, TokenError::Refused { error: "invalid_grant".into(), description: None }),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                parse(status, body, STRICT).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse(200, &huge, STRICT).unwrap_err(), TokenError::TooLarge);
    }

    #[test]
    fn provider_quirks() {
        let gh = Quirks {
            expiry_optional: true,
            slack: false,
        };
        let r = parse(
            200,
            br#"{"access_token":"gho_x","token_type":"bearer","scope":"repo,gist"}"#,
            gh,
        )
        .unwrap();
        assert_eq!(r.expires_in, None);
        assert_eq!(r.scope, Some(vec!["repo".into(), "gist".into()]));
        let slack = Quirks {
            expiry_optional: true,
            slack: true,
        };
        assert_eq!(
            parse(200, br#"{"ok":false,"error":"invalid_code"}"#, slack).unwrap_err(),
            TokenError::Refused {
                error: "invalid_code".into(),
                description: None
            }
        );
        let r = parse(200, br#"{"ok":true,"authed_user":{"id":"U1","scope":"search:read","access_token":"xoxp-1","token_type":"user"},"team":{"id":"T1"}}"#, slack).unwrap();
        assert_eq!(r.access_token.expose_secret(), b"xoxp-1");
        assert_eq!(r.subject.as_deref(), Some("U1"));
        assert_eq!(r.team.as_deref(), Some("T1"));
    }

    #[test]
    fn the_id_token_sub_is_recorded_as_the_subject() {
        // {"iss":"https://as.example","sub":"1108","aud":"c"} — unsigned: only the id is read.
        let body = br#"{"access_token":"at","token_type":"Bearer","expires_in":60,"id_token":"eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUiLCJzdWIiOiIxMTA4IiwiYXVkIjoiYyJ9."}"#;
        assert_eq!(
            parse(200, body, STRICT).unwrap().subject.as_deref(),
            Some("1108")
        );
        let body =
            br#"{"access_token":"at","token_type":"Bearer","expires_in":60,"id_token":"x.!!!.y"}"#;
        assert_eq!(parse(200, body, STRICT).unwrap().subject, None);
    }

    #[test]
    fn errors_never_carry_token_values() {
        let e = parse(
            200,
            br#"{"access_token":"sekrit-value","token_type":"weird"}"#,
            STRICT,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("sekrit"));
    }
}
