//! The demo MCP upstream of `serve --dev`: a small stateless MCP server at `/demo/mcp` with
//! `whoami` (which demo account's token arrived), `echo` and `count` (answers as a stream). It
//! accepts only live access tokens of the demo provider (or, for the API-key demo service, any
//! `X-API-Key`), like a real resource server would.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::demo::DemoProvider;

pub fn routes(demo: Arc<DemoProvider>) -> Router {
    Router::new()
        .route("/demo/mcp", axum::routing::post(handle))
        .with_state(demo)
}

fn reply(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn handle(
    State(demo): State<Arc<DemoProvider>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = if let Some(key) = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        format!("an API-key caller (key of {} characters)", key.len())
    } else {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match demo.introspect(token) {
            Some(a) => format!(
                "demo account {} with scopes [{}]",
                a.account,
                a.scopes.join(" ")
            ),
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
                    "invalid token\n",
                )
                    .into_response();
            }
        }
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON\n").into_response();
    };
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    match msg.get("method").and_then(Value::as_str).unwrap_or("") {
        "initialize" => {
            let version = msg["params"]["protocolVersion"]
                .as_str()
                .unwrap_or("2025-06-18")
                .to_owned();
            reply(
                json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":version,"capabilities":{"tools":{}},"serverInfo":{"name":"scopegate-demo","version":env!("CARGO_PKG_VERSION")}}}),
            )
        }
        "ping" => reply(json!({"jsonrpc":"2.0","id":id,"result":{}})),
        "tools/list" => reply(json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
            {"name":"whoami","description":"Says whose credential reached this server","inputSchema":{"type":"object","properties":{}}},
            {"name":"echo","description":"Echoes its text","inputSchema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}},
            {"name":"count","description":"Counts to n, streaming progress","inputSchema":{"type":"object","properties":{"n":{"type":"integer"}}}}
        ]}})),
        "tools/call" => {
            let text = |t: String| json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":t}]}});
            match msg["params"]["name"].as_str().unwrap_or("") {
                "whoami" => reply(text(format!("You are {who}."))),
                "echo" => reply(text(
                    msg["params"]["arguments"]["text"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(10_000)
                        .collect(),
                )),
                "count" => {
                    let n = msg["params"]["arguments"]["n"]
                        .as_u64()
                        .unwrap_or(3)
                        .min(20);
                    let done = text(format!("counted to {n}"));
                    let stream = futures_util::stream::unfold(0u64, move |i| {
                        let done = done.clone();
                        async move {
                            if i > n {
                                return None;
                            }
                            let event = if i == n {
                                done
                            } else {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":format!("{}", i + 1)}})
                            };
                            Some((
                                Ok::<_, std::io::Error>(format!(
                                    "event: message\ndata: {event}\n\n"
                                )),
                                i + 1,
                            ))
                        }
                    });
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(Body::from_stream(stream))
                        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
                }
                other => reply(
                    json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":format!("unknown tool {}", crate::store::audit::escape_untrusted(other))}}),
                ),
            }
        }
        _ => reply(
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"method not found"}}),
        ),
    }
}
