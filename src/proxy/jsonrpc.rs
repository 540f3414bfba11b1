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
    #[error("batches are not part of MCP since 2025-06-18")]
    Batch,
    #[error("not a JSON-RPC 2.0 message")]
    NotJsonRpc,
    #[error("{0} needs a string params.{1}")]
    MissingTarget(String, &'static str),
}

pub fn inspect(body: &[u8]) -> Result<Message, InspectError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| InspectError::NotJson)?;
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
}
