//! The floor under Scopegate's proxy, for `bench/proxy.sh`: the same two hyper hops Scopegate
//! uses (hyper's HTTP/1 server in, hyper-util's pooled client out, one single-threaded event
//! loop, mimalloc) and nothing else: no agent check, no policy, no JSON reading, no audit. It
//! swaps `Authorization` for the upstream's API key, as the nginx row does, and streams the
//! answer back. What Scopegate costs above this row is Scopegate's own work; what this row
//! costs above nginx is hyper's.   usage: bench_hyper_relay PORT UPSTREAM_URL API_KEY

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).expect("PORT");
    let upstream: Uri = args
        .next()
        .and_then(|u| u.parse().ok())
        .expect("UPSTREAM_URL");
    let key = HeaderValue::from_str(&args.next().expect("API_KEY")).expect("API_KEY");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind");
    println!("bench hyper relay on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream, key) = (client.clone(), upstream.clone(), key.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (client, key) = (client.clone(), key.clone());
                *req.uri_mut() = upstream.clone();
                async move {
                    let h = req.headers_mut();
                    h.remove(AUTHORIZATION);
                    h.insert("x-api-key", key);
                    match client.request(req).await {
                        Ok(resp) => Ok::<_, hyper::Error>(resp.map(|b| b.boxed())),
                        Err(_) => Ok(Response::builder()
                            .status(502)
                            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                            .expect("static response")),
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
