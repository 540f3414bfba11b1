//! Reads what the gateway needs from one JSON-RPC message body (MCP sends one per POST since
//! 2025-06-18): the kind, the id, the method and, for the methods that name one, the target
//! (`tools/call` and `prompts/get`: `params.name`; `resources/read`: `params.uri`). The body
//! itself is forwarded as received. Fuzzed (`fuzz/fuzz_targets/jsonrpc.rs`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        target: Option<String>,
    },
    Notification {
        method: String,
    },
    /// A response or error from the client (to a server-to-client request).
    Response,
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Request { method, .. } | Self::Notification { method } => Some(method),
            Self::Response => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("the message repeats a key, or spells one of its keys in another case")]
    AmbiguousKey,
    #[error("only notifications/* methods may be sent without an id")]
    NotANotification,
    #[error("batches are not part of MCP since 2025-06-18")]
    Batch,
    #[error("not a JSON-RPC 2.0 message")]
    NotJsonRpc,
    #[error("{0} needs a string params.{1}")]
    MissingTarget(String, &'static str),
}

/// Upstreams may read JSON differently from us: last-wins or first-wins duplicate keys, and
/// (Go's encoding/json) case-insensitive, Unicode-folded key matching. Refusing every
/// duplicate, and every key that folds to one the policy reads without being it, leaves one
/// reading (the go-sdk's GHSA-wvj2-96wp-fq3f was exactly this).
fn unambiguous(body: &[u8]) -> bool {
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
                let folded = fold(&key);
                let sensitive = [
                    "jsonrpc",
                    "id",
                    "method",
                    "params",
                    "name",
                    "uri",
                    "arguments",
                ];
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

/// Case folding as lenient JSON decoders apply it (including the long s and the Kelvin sign).
fn fold(key: &str) -> String {
    // The usual case, and the same answer: ASCII folds to its ASCII lowercase.
    if key.is_ascii() {
        return key.to_ascii_lowercase();
    }
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .flat_map(char::to_lowercase)
        .collect()
}

pub fn inspect(body: &[u8]) -> Result<Message, InspectError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| InspectError::NotJson)?;
    if !unambiguous(body) {
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

/// A JSON-RPC error response to `id`.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut err = serde_json::json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": id, "error": err}))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_the_kinds() {
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/x"}}}"#).unwrap(),
            Message::Request { id: 7.into(), method: "tools/call".into(), target: Some("read_file".into()) }
        );
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#).unwrap(),
            Message::Request { id: "a".into(), method: "resources/read".into(), target: Some("file:///x".into()) }
        );
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap(),
            Message::Response
        );
    }

    #[test]
    fn refuses_what_is_not_one_mcp_message() {
        assert_eq!(inspect(b"nope"), Err(InspectError::NotJson));
        assert_eq!(
            inspect(br#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#),
            Err(InspectError::Batch)
        );
        assert_eq!(
            inspect(br#"{"id":1,"method":"x"}"#),
            Err(InspectError::NotJsonRpc)
        );
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#),
            Err(InspectError::NotJsonRpc)
        );
        assert!(matches!(
            inspect(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#),
            Err(InspectError::MissingTarget(..))
        ));
    }

    /// Regression: a tools/call without an id, duplicate keys and case-variant keys would let
    /// an upstream run a tool the gateway never checked.
    #[test]
    fn refuses_messages_an_upstream_could_read_differently() {
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"write_file"}}"#),
            Err(InspectError::NotANotification)
        );
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","name":"write_file"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","Name":"write_file"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            // `param\u{17f}` (long s) folds to `params` in Go's decoder.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\"},\"param\u{17f}\":{\"name\":\"write_file\"}}",
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}"#,
        ] {
            assert_eq!(
                inspect(body.as_bytes()),
                Err(InspectError::AmbiguousKey),
                "{body}"
            );
        }
        // Repeated keys at different levels are fine.
        assert!(
            inspect(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"name":"b","params":{"id":3}}}}"#)
                .is_ok()
        );
    }
}
