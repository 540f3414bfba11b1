//! Slack's Events API: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{raw body}">`
//! under the app's signing secret, with `X-Slack-Request-Timestamp` within five minutes of
//! now (api.slack.com/authentication/verifying-requests-from-slack: the timestamp is signed,
//! so an old request cannot be replayed later). Verified bodies carry `url_verification`
//! (answer the challenge), `tokens_revoked` (user ids per token type, not token strings) or
//! `app_uninstalled` (the whole workspace); the two may arrive in either order.

use serde_json::Value;

use crate::oauth::token::identifier;

/// Slack's replay window.
pub const MAX_AGE_SECS: i64 = 5 * 60;
/// How far ahead of our clock a timestamp may be (clock skew), no more.
pub const MAX_SKEW_SECS: i64 = 60;
/// Ids taken from one event at most; more are ignored (and logged by the caller).
const MAX_IDS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackRefusal {
    #[error("no X-Slack-Signature or X-Slack-Request-Timestamp header")]
    Unsigned,
    #[error("the request timestamp is not a number")]
    BadTimestamp,
    #[error("the request is older than five minutes or ahead of our clock")]
    Stale,
    #[error("the signature does not match")]
    BadSignature,
}

/// Checks the timestamp window, then the signature. `now` is Unix seconds.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SlackRefusal> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(SlackRefusal::Unsigned);
    };
    check_fresh(ts, now)?;
    let hex = sig.strip_prefix("v0=").ok_or(SlackRefusal::BadSignature)?;
    if super::hmac_sha256_matches(secret, &[b"v0:", ts.as_bytes(), b":", body], hex) {
        Ok(())
    } else {
        Err(SlackRefusal::BadSignature)
    }
}

/// The timestamp window alone (it does not depend on the secret).
pub fn check_fresh(ts: &str, now: i64) -> Result<(), SlackRefusal> {
    if ts.is_empty() || ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SlackRefusal::BadTimestamp);
    }
    let t: i64 = ts.parse().map_err(|_| SlackRefusal::BadTimestamp)?;
    if now.saturating_sub(t) > MAX_AGE_SECS || t.saturating_sub(now) > MAX_SKEW_SECS {
        return Err(SlackRefusal::Stale);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackEvent {
    /// The Events API handshake: answer with the challenge.
    UrlVerification {
        challenge: String,
    },
    /// Tokens of these users (and bot users) of `team` were revoked.
    TokensRevoked {
        team: String,
        users: Vec<String>,
        event_id: Option<String>,
        event_time: Option<i64>,
    },
    /// The app was removed from `team`: every token there is gone.
    AppUninstalled {
        team: String,
        event_id: Option<String>,
        event_time: Option<i64>,
    },
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackParseError {
    #[error("the payload is not a JSON object")]
    NotJson,
    #[error("the url_verification has no usable challenge")]
    NoChallenge,
    #[error("the event names no team_id")]
    NoTeam,
}

/// Parses a verified body.
pub fn parse(body: &[u8]) -> Result<SlackEvent, SlackParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| SlackParseError::NotJson)?;
    let Value::Object(obj) = v else {
        return Err(SlackParseError::NotJson);
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = obj
                .get("challenge")
                .and_then(Value::as_str)
                .and_then(identifier)
                .ok_or(SlackParseError::NoChallenge)?;
            return Ok(SlackEvent::UrlVerification { challenge });
        }
        Some("event_callback") => {}
        _ => return Ok(SlackEvent::Ignored),
    }
    let Some(event) = obj.get("event") else {
        return Ok(SlackEvent::Ignored);
    };
    let kind = event.get("type").and_then(Value::as_str);
    if !matches!(kind, Some("tokens_revoked" | "app_uninstalled")) {
        return Ok(SlackEvent::Ignored);
    }
    let team = obj
        .get("team_id")
        .and_then(Value::as_str)
        .and_then(identifier)
        .ok_or(SlackParseError::NoTeam)?;
    let event_id = obj
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(identifier);
    let event_time = obj.get("event_time").and_then(Value::as_i64);
    if kind == Some("app_uninstalled") {
        return Ok(SlackEvent::AppUninstalled {
            team,
            event_id,
            event_time,
        });
    }
    let mut users = Vec::new();
    if let Some(tokens) = event.get("tokens").and_then(Value::as_object) {
        for kind in ["oauth", "bot"] {
            for id in tokens
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(identifier)
            {
                if users.len() < MAX_IDS && !users.contains(&id) {
                    users.push(id);
                }
            }
        }
    }
    Ok(SlackEvent::TokensRevoked {
        team,
        users,
        event_id,
        event_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's published example ("Verifying requests from Slack", step by step).
    const DOC_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const DOC_TS: &str = "1531420618";
    const DOC_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const DOC_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_published_test_vector_passes() {
        let now = 1531420618 + 10;
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), DOC_BODY, now),
            Ok(())
        );
        // The timestamp is signed: another one breaks the signature.
        assert_eq!(
            verify(DOC_SECRET, Some("1531420619"), Some(DOC_SIG), DOC_BODY, now),
            Err(SlackRefusal::BadSignature)
        );
        assert_eq!(
            verify(
                b"another secret",
                Some(DOC_TS),
                Some(DOC_SIG),
                DOC_BODY,
                now
            ),
            Err(SlackRefusal::BadSignature)
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(&DOC_SIG[3..]), DOC_BODY, now),
            Err(SlackRefusal::BadSignature)
        );
        assert_eq!(
            verify(DOC_SECRET, None, Some(DOC_SIG), DOC_BODY, now),
            Err(SlackRefusal::Unsigned)
        );
    }

    #[test]
    fn old_and_future_timestamps_are_refused_even_when_signed() {
        let t = 1531420618;
        for (now, want) in [
            (t + MAX_AGE_SECS, Ok(())),
            (t + MAX_AGE_SECS + 1, Err(SlackRefusal::Stale)),
            (t - MAX_SKEW_SECS - 1, Err(SlackRefusal::Stale)),
        ] {
            assert_eq!(
                verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), DOC_BODY, now),
                want,
                "now = {now}"
            );
        }
        for bad in ["", "-5", "1e9", "99999999999999999999", " 1531420618"] {
            assert_eq!(
                check_fresh(bad, t),
                Err(SlackRefusal::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn events_are_parsed() {
        assert_eq!(
            parse(br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#),
            Ok(SlackEvent::UrlVerification {
                challenge: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
            })
        );
        assert_eq!(
            parse(br#"{"team_id":"T1","type":"event_callback","event_id":"Ev1","event_time":1700000000,"event":{"type":"tokens_revoked","tokens":{"oauth":["U1","U2"],"bot":["B1","U1"]}}}"#),
            Ok(SlackEvent::TokensRevoked {
                team: "T1".into(),
                users: vec!["U1".into(), "U2".into(), "B1".into()],
                event_id: Some("Ev1".into()),
                event_time: Some(1700000000)
            })
        );
        assert_eq!(
            parse(
                br#"{"team_id":"T1","type":"event_callback","event":{"type":"app_uninstalled"}}"#
            ),
            Ok(SlackEvent::AppUninstalled {
                team: "T1".into(),
                event_id: None,
                event_time: None
            })
        );
        assert_eq!(
            parse(br#"{"type":"event_callback","event":{"type":"app_uninstalled"}}"#),
            Err(SlackParseError::NoTeam)
        );
        assert_eq!(
            parse(br#"{"type":"event_callback","team_id":"T1","event":{"type":"message"}}"#),
            Ok(SlackEvent::Ignored)
        );
        assert_eq!(
            parse(br#"{"type":"url_verification","challenge":""}"#),
            Err(SlackParseError::NoChallenge)
        );
        assert_eq!(parse(b"token=x"), Err(SlackParseError::NotJson));
    }
}
