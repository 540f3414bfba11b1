//! The scope audit against real data: a real authorization server (npm `oidc-provider`), the
//! real gateway binary, an agent that calls only a read tool through it. The report calls the
//! connection over-scoped, and its narrowing link ends in a consent prompt that asks only for
//! `files.read`. Needs `npm ci` in tests/interop (scripts/test.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use browser::{Browser, free_port};
use harness::Instance;

const CLIENT_SECRET: &str = "interop-client-secret-scopes-7c1d";

struct Op {
    child: Child,
    port: u16,
}

impl Op {
    fn start(redirect_uri: &str, dir: &std::path::Path) -> Op {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            root.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci` in tests/interop (scripts/test.sh does)"
        );
        let port = free_port();
        let log = dir.join("op.log");
        let child = Command::new("node")
            .arg(root.join("oidc-server.mjs"))
            .env("PORT", port.to_string())
            .env("REDIRECT_URI", redirect_uri)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        harness::wait_until_ready(&log, "oidc-provider", Duration::from_secs(20));
        Op { child, port }
    }

    async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/test/stats", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MCP upstream that answers every tools/call with a text result.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: String| async move {
            let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].clone();
            let out = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"contents"}]}});
            axum::response::Response::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::from(out.to_string()))
                .unwrap()
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn report(inst: &Instance) -> Vec<serde_json::Value> {
    serde_json::from_str(&inst.ok(&["scopes", "report", "--json"], b"")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_use_is_reported_over_scoped_and_the_fix_asks_only_for_files_read() {
    let up = upstream().await;
    let gw = free_port();
    let base = format!("http://127.0.0.1:{gw}");
    let tmp = tempfile::tempdir().unwrap();
    let op = Op::start(&format!("{base}/oauth/callback"), tmp.path());
    let inst = Instance::init_with(&format!(
        "listen = \"127.0.0.1:{gw}\"\npublic_url = \"{base}\"\n\
         [providers.corp]\nissuer = \"http://127.0.0.1:{}\"\nclient_id = \"scopegate\"\n\
         client_secret_env = \"SCOPEGATE_TEST_CORP_SECRET\"\n\
         [services.files]\nprovider = \"corp\"\nmcp_url = \"http://127.0.0.1:{up}/mcp\"\n\
         scopes = [\"files.read\", \"files.write\"]\n\
         [services.files.tools]\nread_file = [\"files.read\"]\nwrite_file = [\"files.write\"]\n",
        op.port
    ));
    let _server = inst.start_with(|c| {
        c.env("SCOPEGATE_TEST_CORP_SECRET", CLIENT_SECRET);
    });

    // alice connects with everything the service is configured for.
    inst.ok(&["user", "add", "alice"], b"");
    let link = inst.ok(&["user", "link", "alice"], b"").trim().to_owned();
    let mut b = Browser::new();
    let token = Browser::form_value(&b.get(&link).await.body, "token");
    b.post(&format!("{base}/login"), &[("token", &token)]).await;
    let csrf = Browser::form_value(&b.get(&format!("{base}/connect")).await.body, "csrf");
    let start = b
        .post(&format!("{base}/connect/files"), &[("csrf", &csrf)])
        .await;
    let cb = b
        .follow_until(start, &format!("{base}/oauth/callback"))
        .await
        .unwrap_or_else(|p| panic!("stuck at {}: {}", p.url, p.body));
    assert_eq!(
        op.stats().await["consent_asked"],
        serde_json::json!(["files.read", "files.write"])
    );
    assert_eq!(b.get(&cb).await.status, 303);

    // Before any call: both scopes are needed by tools the agent may call, neither exercised.
    let agent = inst
        .ok(&["agent", "add", "reader", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let r = report(&inst);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0]["needed"],
        serde_json::json!(["files.read", "files.write"])
    );
    assert_eq!(r[0]["exercised"], serde_json::json!([]));

    // The agent only ever reads: two calls, then (in a later second) a third.
    let http = reqwest::Client::new();
    let mut before_last = time::OffsetDateTime::now_utc();
    for i in 0..3 {
        if i == 2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            before_last = time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap();
        }
        let body = serde_json::json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"a"}}});
        let resp = http
            .post(format!("{base}/mcp/files"))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("contents"));
    }
    // Per-call audit entries are group-committed a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = report(&inst);
        // All three calls' entries, not just the first batch.
        if r[0]["exercised"][0]["calls"] == 3 {
            break r;
        }
        assert!(Instant::now() < deadline, "no exercised scope: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = &r[0];
    assert_eq!(
        c["granted"],
        serde_json::json!(["files.read", "files.write"])
    );
    assert_eq!(c["exercised"][0]["scope"], "files.read");
    assert_eq!(c["exercised"][0]["calls"], 3);
    // Last use: the time of the last of those calls, not the first (audit times have second
    // precision, and the third call came at least a second after the first two).
    let last = time::OffsetDateTime::parse(
        c["exercised"][0]["last_used"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        last >= before_last && last <= time::OffsetDateTime::now_utc(),
        "{last} not within the calls"
    );
    assert_eq!(
        c["findings"],
        serde_json::json!([{"kind": "unexercised", "scope": "files.write"}])
    );
    assert_eq!(c["narrowed"], serde_json::json!(["files.read"]));
    let text = inst.ok(&["scopes", "report"], b"");
    assert!(
        text.contains("OVER-SCOPED") && text.contains("files.write granted, never exercised"),
        "{text}"
    );

    // The fix, opened by alice in a fresh browser (a new provider session, so the provider
    // must show its consent prompt rather than reuse the earlier grant silently). The link
    // shows a button (the GET alone starts nothing)...
    let link = inst.ok(&["user", "link", "alice"], b"").trim().to_owned();
    let mut b = Browser::new();
    let token = Browser::form_value(&b.get(&link).await.body, "token");
    b.post(&format!("{base}/login"), &[("token", &token)]).await;
    let fix = c["fix_url"].as_str().unwrap();
    assert!(fix.starts_with(&format!("{base}/connect?")), "{fix}");
    let page = b.get(fix).await;
    assert_eq!(page.status, 200);
    assert_eq!(Browser::form_value(&page.body, "scope"), "files.read");
    let csrf = Browser::form_value(&page.body, "csrf");
    // ...a widened request is refused and asks the provider nothing...
    let before = op.stats().await;
    let wide = b
        .post(
            &format!("{base}/connect/files"),
            &[("csrf", &csrf), ("scope", "files.read files.admin")],
        )
        .await;
    assert_eq!(wide.status, 400, "{}", wide.body);
    assert_eq!(op.stats().await, before);
    // ...and the narrowed one ends in a consent that asks only for files.read.
    let start = b
        .post(
            &format!("{base}/connect/files"),
            &[("csrf", &csrf), ("scope", "files.read")],
        )
        .await;
    assert_eq!(start.status, 302, "{}", start.body);
    let cb = b
        .follow_until(start, &format!("{base}/oauth/callback"))
        .await
        .unwrap_or_else(|p| panic!("stuck at {}: {}", p.url, p.body));
    assert_eq!(
        op.stats().await["consent_asked"],
        serde_json::json!(["files.read"])
    );
    assert_eq!(b.get(&cb).await.status, 303);
    let conns: Vec<serde_json::Value> =
        serde_json::from_str(&inst.ok(&["connection", "list", "--json"], b"")).unwrap();
    let live: Vec<_> = conns.iter().filter(|c| c["status"] == "active").collect();
    assert_eq!(live.len(), 1, "{conns:?}");
    assert_eq!(live[0]["scopes"], serde_json::json!(["files.read"]));
}
