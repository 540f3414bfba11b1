//! A minimal MCP-shaped upstream for `bench/proxy.sh`: answers every POST with a fixed
//! JSON-RPC result, checking only that the expected API key arrived (so a benchmark can't pass
//! with credential injection broken). `POST /token` is a stub token endpoint for the refresh
//! benchmark: every request gets a fresh access and refresh token (one hour), and
//! `GET /token-stats` says how many it issued.  usage: bench_upstream PORT EXPECTED_KEY

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

static ISSUED: AtomicU64 = AtomicU64::new(0);
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9700);
    let key: &'static str = Box::leak(args.next().unwrap_or_default().into_boxed_str());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind");
    println!("bench upstream on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                if req.uri().path() == "/token" {
                    let n = ISSUED.fetch_add(1, Ordering::Relaxed);
                    let body = format!(
                        r#"{{"access_token":"bench-at-{n}","token_type":"Bearer","expires_in":3600,"refresh_token":"bench-rt-{n}"}}"#
                    );
                    let resp = Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)));
                    return Ok::<_, Infallible>(resp.unwrap_or_default());
                }
                if req.uri().path() == "/token-stats" {
                    let body = ISSUED.load(Ordering::Relaxed).to_string();
                    return Ok(Response::new(Full::new(Bytes::from(body))));
                }
                let ok = req
                    .headers()
                    .get("x-api-key")
                    .is_some_and(|v| v.as_bytes() == key.as_bytes());
                let resp = if ok {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#)))
                } else {
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(Full::new(Bytes::from_static(b"no key")))
                };
                Ok::<_, Infallible>(resp.unwrap_or_default())
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
