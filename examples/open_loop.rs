//! An open-loop load generator for the benchmarks: sends the MCP `tools/call` the other
//! benches use at a fixed rate, whatever the answers' latency (each request is its own task,
//! so a slow answer never delays the next send: no coordinated omission), and times each from
//! when it was sent (tokio's timer fires up to 1 ms late; that is not the server's). Loopback
//! only.
//!
//!   usage: open_loop URL AUTHORIZATION RATE_PER_SEC SECONDS
//!   prints: `sent N ok N rps R p50_us P p99_us P max_us P`

use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, auth, rate, secs] = args.as_slice() else {
        eprintln!("usage: open_loop URL AUTHORIZATION RATE_PER_SEC SECONDS");
        std::process::exit(2);
    };
    let host = reqwest::Url::parse(url).ok();
    if !matches!(
        host.as_ref().and_then(|u| u.host_str()),
        Some("127.0.0.1" | "localhost")
    ) {
        eprintln!("open_loop only targets 127.0.0.1 or localhost");
        std::process::exit(2);
    }
    let rate: u64 = rate.parse().unwrap_or(1000).clamp(1, 50_000);
    let secs: u64 = secs.parse().unwrap_or(10).clamp(1, 600);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = rate * secs;
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    for i in 0..total {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, auth, tx) = (client.clone(), url.clone(), auth.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let ok = client
                .post(url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let _ = tx.send((sent.elapsed().as_micros() as u64, ok));
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut ok = 0u64;
    while let Some((us, good)) = rx.recv().await {
        lat.push(us);
        ok += u64::from(good);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "sent {} ok {ok} rps {:.0} p50_us {} p99_us {} max_us {}",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
}
