//! The connect flow against a real third-party authorization server: npm `oidc-provider` on
//! 127.0.0.1 (PKCE required, rotating refresh tokens, RFC 9207 `iss`), driven through the
//! real gateway binary by a cookie-keeping HTTP client. Needs `npm ci` in tests/interop
//! (scripts/test.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use browser::{Browser, free_port};
use harness::{Instance, Server};

const CLIENT_SECRET: &str = "interop-client-secret-5f1e2d";

struct Op {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Op {
    fn start_env(
        redirect_uri: &str,
        dir: &std::path::Path,
        access_ttl: u64,
        env: &[(&str, &str)],
    ) -> Op {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            root.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci` in tests/interop (scripts/test.sh does)"
        );
        let port = free_port();
        let log = dir.join(format!("op-{port}.log"));
        let child = Command::new("node")
            .arg(root.join("oidc-server.mjs"))
            .env("PORT", port.to_string())
            .env("REDIRECT_URI", redirect_uri)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("ACCESS_TTL", access_ttl.to_string())
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let op = Op { child, port, log };
        harness::wait_until_ready(&op.log, "oidc-provider", Duration::from_secs(20));
        op
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn token_requests(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/test/stats", self.issuer()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token_requests"].as_u64().unwrap()
    }

    async fn mode(&self, m: serde_json::Value) {
        reqwest::Client::new()
            .post(format!("{}/test/mode", self.issuer()))
            .body(m.to_string())
            .send()
            .await
            .unwrap();
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    inst: Instance,
    server: Server,
    base: String,
    ops: Vec<Op>,
}

/// A gateway with one OAuth service per oidc-provider instance (`files`, then `files2`).
fn setup(n_ops: usize) -> Setup {
    setup_with(n_ops, 3600, "http://127.0.0.1:9/mcp")
}

fn setup_with(n_ops: usize, access_ttl: u64, mcp_url: &str) -> Setup {
    setup_full(n_ops, access_ttl, mcp_url, true)
}

/// `proactive`: whether the refresh scheduler runs (off to test on-demand refresh alone).
fn setup_full(n_ops: usize, access_ttl: u64, mcp_url: &str, proactive: bool) -> Setup {
    setup_limits(
        n_ops,
        access_ttl,
        mcp_url,
        &format!("proactive_refresh = {proactive}\n"),
    )
}

/// `limits`: extra lines for the `[limits]` table.
fn setup_limits(n_ops: usize, access_ttl: u64, mcp_url: &str, limits: &str) -> Setup {
    setup_env(n_ops, access_ttl, mcp_url, limits, &[])
}

/// `op_env`: extra environment for the oidc-provider script (e.g. `DPOP=1`).
fn setup_env(
    n_ops: usize,
    access_ttl: u64,
    mcp_url: &str,
    limits: &str,
    op_env: &[(&str, &str)],
) -> Setup {
    let gw = free_port();
    let base = format!("http://127.0.0.1:{gw}");
    let tmp = tempfile::tempdir().unwrap();
    let ops: Vec<Op> = (0..n_ops)
        .map(|_| {
            Op::start_env(
                &format!("{base}/oauth/callback"),
                tmp.path(),
                access_ttl,
                op_env,
            )
        })
        .collect();
    // 64 concurrent calls from one agent in the refresh test: lift the per-agent cap (32).
    let mut config = format!(
        "listen = \"127.0.0.1:{gw}\"\npublic_url = \"{base}\"\n[limits]\nmax_streams_per_agent = 128\n{limits}"
    );
    for (i, op) in ops.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            (i + 1).to_string()
        };
        config.push_str(&format!(
            "[providers.corp{suffix}]\nissuer = \"{}\"\nclient_id = \"scopegate\"\nclient_secret_env = \"SCOPEGATE_TEST_CORP_SECRET\"\n\
             [services.files{suffix}]\nprovider = \"corp{suffix}\"\nmcp_url = \"{mcp_url}\"\nscopes = [\"files.read\", \"files.write\"]\n",
            op.issuer()
        ));
    }
    let inst = Instance::init_with(&config);
    let server = inst.start_with(|c| {
        c.env("SCOPEGATE_TEST_CORP_SECRET", CLIENT_SECRET);
    });
    std::mem::forget(tmp);
    Setup {
        inst,
        server,
        base,
        ops,
    }
}

impl Setup {
    /// A browser signed in as `user` through a fresh login link.
    async fn browser(&self, user: &str) -> Browser {
        let _ = self.inst.run(&["user", "add", user], b"");
        let link = self.inst.ok(&["user", "link", user], b"").trim().to_owned();
        let mut b = Browser::new();
        let page = b.get(&link).await;
        let token = Browser::form_value(&page.body, "token");
        let after = b
            .post(&format!("{}/login", self.base), &[("token", &token)])
            .await;
        assert_eq!(after.status, 303, "{}", after.body);
        b
    }

    /// Starts connecting `service` and follows the provider until it redirects back to the
    /// gateway's callback; returns that URL without visiting it.
    async fn authorize(&self, b: &mut Browser, service: &str) -> String {
        let page = b.get(&format!("{}/connect", self.base)).await;
        let csrf = Browser::form_value(&page.body, "csrf");
        let start = b
            .post(
                &format!("{}/connect/{service}", self.base),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(start.status, 302, "{}", start.body);
        let loc = start.location.clone().unwrap();
        assert!(
            loc.contains("code_challenge_method=S256") && loc.contains("state="),
            "{loc}"
        );
        b.follow_until(start, &format!("{}/oauth/callback", self.base))
            .await
            .unwrap_or_else(|p| panic!("stuck at {}: {} {}", p.url, p.status, p.body))
    }

    fn connections(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.inst.ok(&["connection", "list", "--json"], b"")).unwrap()
    }
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != key)
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(key, value);
    u.to_string()
}

#[tokio::test]
async fn happy_path_records_the_granted_scopes_and_flow_pages_are_hardened() {
    let s = setup(1);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert!(
        cb.contains("iss="),
        "oidc-provider sends RFC 9207 iss: {cb}"
    );
    let done = b.get(&cb).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        done.location.as_deref(),
        Some(format!("{}/connect?connected=files", s.base).as_str())
    );
    for (h, v) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(done.headers.get(h).unwrap(), v);
    }
    assert!(
        done.headers
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(s.ops[0].token_requests().await, 1);
    let conns = s.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["status"], "active");
    assert_eq!(
        conns[0]["scopes"],
        serde_json::json!(["files.read", "files.write"])
    );
    let page = b.get(&format!("{}/connect", s.base)).await;
    assert!(
        page.body.contains("connected") && page.body.contains("files.read files.write"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn fewer_scopes_granted_are_what_is_recorded() {
    let s = setup(1);
    s.ops[0]
        .mode(serde_json::json!({"grant": ["files.read"]}))
        .await;
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    assert_eq!(
        s.connections()[0]["scopes"],
        serde_json::json!(["files.read"])
    );
}

#[tokio::test]
async fn a_denial_is_shown_escaped_and_makes_no_token_request() {
    let s = setup(1);
    s.ops[0].mode(serde_json::json!({"deny": true})).await;
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert!(cb.contains("error=access_denied"), "{cb}");
    let page = b.get(&cb).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("access_denied"));
    assert!(
        !page.body.contains("<b>denied</b>") && page.body.contains("&lt;b&gt;denied&lt;/b&gt;"),
        "{}",
        page.body
    );
    assert_eq!(s.ops[0].token_requests().await, 0);
    assert!(s.connections().is_empty());
}

/// I8/I10: unknown, reused and other-session `state` change nothing and make no token request.
#[tokio::test]
async fn bad_state_is_refused_without_a_token_request() {
    let s = setup(1);
    let mut b = s.browser("alice").await;

    // Unknown state.
    let cb = s.authorize(&mut b, "files").await;
    let forged = with_param(&cb, "state", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let page = b.get(&forged).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("unknown or was already used"),
        "{}",
        page.body
    );
    assert_eq!(s.ops[0].token_requests().await, 0);

    // Another browser session (same user, even) delivering this browser's callback.
    let mut other = s.browser("alice").await;
    let page = other.get(&cb).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("another browser session"),
        "{}",
        page.body
    );
    assert_eq!(s.ops[0].token_requests().await, 0);
    assert!(s.connections().is_empty());

    // The rightful browser still completes it once...
    assert_eq!(b.get(&cb).await.status, 303);
    assert_eq!(s.ops[0].token_requests().await, 1);
    // ...and a replay is refused with no second token request.
    let page = b.get(&cb).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("unknown or was already used"));
    assert_eq!(s.ops[0].token_requests().await, 1);
}

/// I9: an `iss` that is not the expected issuer is refused, and a missing one too when the
/// server advertises RFC 9207.
#[tokio::test]
async fn wrong_or_missing_iss_is_refused() {
    let s = setup(1);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    let page = b.get(&with_param(&cb, "iss", "http://127.0.0.1:1")).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("iss mismatch"), "{}", page.body);
    let mut u = reqwest::Url::parse(&cb).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "iss")
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    let page = b.get(u.as_str()).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("iss missing"), "{}", page.body);
    assert_eq!(s.ops[0].token_requests().await, 0);
    // Neither attempt spent the state: the genuine response still works.
    assert_eq!(b.get(&cb).await.status, 303);
}

/// Mix-up (RFC 9207 §1): a response from server B carrying the state of a flow started at A
/// is refused; neither server's token endpoint is called.
#[tokio::test]
async fn mix_up_between_two_authorization_servers_is_refused() {
    let s = setup(2);
    let mut b = s.browser("alice").await;
    let cb_a = s.authorize(&mut b, "files").await;
    let cb_b = s.authorize(&mut b, "files2").await;
    let ua = reqwest::Url::parse(&cb_a).unwrap();
    let ub = reqwest::Url::parse(&cb_b).unwrap();
    let get = |u: &reqwest::Url, k: &str| {
        u.query_pairs()
            .find(|(x, _)| x == k)
            .unwrap()
            .1
            .into_owned()
    };
    // B's code and iss with A's state: what an attacker at B would send.
    let mut mixed = reqwest::Url::parse(&format!("{}/oauth/callback", s.base)).unwrap();
    mixed
        .query_pairs_mut()
        .append_pair("code", &get(&ub, "code"))
        .append_pair("state", &get(&ua, "state"))
        .append_pair("iss", &get(&ub, "iss"));
    let page = b.get(mixed.as_str()).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("iss mismatch"), "{}", page.body);
    assert_eq!(s.ops[0].token_requests().await, 0);
    assert_eq!(s.ops[1].token_requests().await, 0);
    assert!(s.connections().is_empty());
}

/// Disconnect revokes at the provider (RFC 7009) and deletes locally.
#[tokio::test]
async fn disconnect_revokes_at_the_provider() {
    let s = setup(1);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let page = b.get(&format!("{}/connect", s.base)).await;
    let csrf = Browser::form_value(&page.body, "csrf");
    // A forged form (no CSRF token) is refused.
    let forged = b
        .post(
            &format!("{}/connect/files/disconnect", s.base),
            &[("csrf", "nope")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(s.connections()[0]["status"], "active");
    let out = b
        .post(
            &format!("{}/connect/files/disconnect", s.base),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        out.location.as_deref(),
        Some(format!("{}/connect?disconnected=files", s.base).as_str())
    );
    assert_eq!(s.connections()[0]["status"], "revoked");
    let stats: serde_json::Value = reqwest::get(format!("{}/test/stats", s.ops[0].issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["revocations"], 2, "refresh token, then access token");
    let audit = s.inst.ok(&["audit", "list"], b"");
    assert!(audit.contains("provider_revocation=\"ok\""), "{audit}");
}

/// The provider unreachable: disconnect still deletes everything locally, and says so.
#[tokio::test]
async fn disconnect_with_the_provider_down_still_deletes_locally() {
    let mut s = setup(1);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let page = b.get(&format!("{}/connect", s.base)).await;
    let csrf = Browser::form_value(&page.body, "csrf");
    s.ops.clear(); // kills oidc-provider
    let out = b
        .post(
            &format!("{}/connect/files/disconnect", s.base),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        out.location.as_deref(),
        Some(format!("{}/connect?unrevoked=files", s.base).as_str())
    );
    assert_eq!(s.connections()[0]["status"], "revoked");
    let page = b.get(out.location.as_deref().unwrap()).await;
    assert!(page.body.contains("could not be reached"), "{}", page.body);
    assert!(s.server.term().success());
    let v = scopegate::vault::Vault::unlock(
        &s.inst.dir.join("secrets.redb"),
        &scopegate::secret::Passphrase::new(s.inst.pass.as_bytes().to_vec()),
    )
    .unwrap();
    assert!(v.records().unwrap().is_empty(), "sealed tokens left behind");
}

/// I4 with real tokens: after connecting, the access and refresh tokens oidc-provider issued
/// appear in no log line, audit entry, page, command output or raw data file.
#[tokio::test]
async fn canary_real_tokens_never_leave_the_vault() {
    let mut s = setup(1);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    let mut seen = String::new();
    let done = b.get(&cb).await;
    seen += &done.body;
    seen += &b.get(&format!("{}/connect", s.base)).await.body;
    for args in [
        &["connection", "list", "--json"][..],
        &["audit", "list", "--json"][..],
        &["audit", "list"][..],
    ] {
        seen += &s.inst.ok(args, b"");
    }
    seen += &reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(s.server.term().success());
    seen += &s.server.logs();
    let v = scopegate::vault::Vault::unlock(
        &s.inst.dir.join("secrets.redb"),
        &scopegate::secret::Passphrase::new(s.inst.pass.as_bytes().to_vec()),
    )
    .unwrap();
    let record = v
        .records()
        .unwrap()
        .into_iter()
        .find(|r| r.starts_with("secret/"))
        .unwrap();
    let access = v
        .get(&record, "access_token")
        .unwrap()
        .unwrap()
        .expose_secret()
        .to_vec();
    let refresh = v
        .get(&record, "refresh_token")
        .unwrap()
        .unwrap()
        .expose_secret()
        .to_vec();
    drop(v);
    assert!(access.len() >= 20 && refresh.len() >= 20);
    for token in [&access, &refresh] {
        assert!(
            !harness::contains(seen.as_bytes(), token),
            "a token appeared in output"
        );
        for (path, bytes) in harness::all_files(s.inst.tmp.path()) {
            assert!(
                !harness::contains(&bytes, token),
                "a token appeared in {}",
                path.display()
            );
        }
    }
}

/// Discovery refuses a server whose metadata lacks S256, and one whose metadata names
/// another issuer; nothing is redirected.
#[tokio::test]
async fn discovery_refuses_servers_without_s256_or_with_another_issuer() {
    for (case, methods, issuer_override) in [
        ("no-s256", r#"["plain"]"#, None),
        ("wrong-issuer", r#"["S256"]"#, Some("https://evil.example")),
    ] {
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let meta = format!(
            r#"{{"issuer":"{}","authorization_endpoint":"{issuer}/auth","token_endpoint":"{issuer}/token","code_challenge_methods_supported":{methods}}}"#,
            issuer_override.unwrap_or(&issuer)
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let meta = meta.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{meta}",
                        meta.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        let gw = free_port();
        let base = format!("http://127.0.0.1:{gw}");
        let inst = Instance::init_with(&format!(
            "listen = \"127.0.0.1:{gw}\"\n[providers.weak]\nissuer = \"{issuer}\"\nclient_id = \"c\"\n[services.weak]\nprovider = \"weak\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\nscopes = [\"x\"]\n"
        ));
        let _server = inst.start();
        inst.ok(&["user", "add", "alice"], b"");
        let link = inst.ok(&["user", "link", "alice"], b"").trim().to_owned();
        let mut b = Browser::new();
        let token = Browser::form_value(&b.get(&link).await.body, "token");
        b.post(&format!("{base}/login"), &[("token", &token)]).await;
        let csrf = Browser::form_value(&b.get(&format!("{base}/connect")).await.body, "csrf");
        let page = b
            .post(&format!("{base}/connect/weak"), &[("csrf", &csrf)])
            .await;
        assert_eq!(page.status, 502, "{case}: {}", page.body);
        assert!(page.location.is_none(), "{case}: redirected anyway");
        let want = if case == "no-s256" { "S256" } else { "issuer" };
        assert!(page.body.contains(want), "{case}: {}", page.body);
    }
}

/// A resource server that validates every token it receives by RFC 7662 introspection at the
/// oidc-provider (whose issuer it learns once that is running), answering `whoami` with the
/// token's subject and 401 for anything inactive.
async fn introspecting_upstream(issuer: Arc<tokio::sync::OnceCell<String>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let issuer = issuer.clone();
            async move {
                let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_owned();
                let v: serde_json::Value = reqwest::Client::new()
                    .post(format!("{}/token/introspection", issuer.get().unwrap()))
                    .basic_auth("scopegate", Some(CLIENT_SECRET))
                    .form(&[("token", token.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if v["active"] != true {
                    return axum::response::Response::builder().status(401).body(axum::body::Body::from("inactive")).unwrap();
                }
                let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].clone();
                let out = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":v["sub"]}]}});
                axum::response::Response::builder().header("content-type", "application/json").body(axum::body::Body::from(out.to_string())).unwrap()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// I15/I16 against oidc-provider (rotating refresh tokens, reuse detection, 6 s access
/// tokens) with an upstream that introspects every token, the scheduler off: after the token
/// expires, 64 concurrent agent calls cause exactly one token request and all succeed; over
/// `SCOPEGATE_REFRESH_CYCLES` cycles (2 here; 200 for the issue's run, with
/// `SCOPEGATE_REFRESH_TTL=2`); the grant survives (no reuse detected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_an_expired_token_refresh_once() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (cycles, ttl) = (
        env("SCOPEGATE_REFRESH_CYCLES", 2),
        env("SCOPEGATE_REFRESH_TTL", 6),
    );
    let issuer = Arc::new(tokio::sync::OnceCell::new());
    let up = introspecting_upstream(issuer.clone()).await;
    let s = setup_full(1, ttl, &format!("http://127.0.0.1:{up}/mcp"), false);
    issuer.set(s.ops[0].issuer()).unwrap();
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let token = s
        .inst
        .ok(&["agent", "add", "worker", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let url = format!("{}/mcp/files", s.base);
    let http = reqwest::Client::new();
    let call = |i: u64| {
        let (url, token, http) = (url.clone(), token.clone(), http.clone());
        async move {
            let body = serde_json::json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let (st, body) = call(0).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("alice"), "{body}");
    assert_eq!(
        s.ops[0].token_requests().await,
        1,
        "only the code exchange so far"
    );
    for round in 1..=cycles {
        tokio::time::sleep(Duration::from_millis(ttl * 1000 + 500)).await;
        let before = s.ops[0].token_requests().await;
        let results = futures_util::future::join_all((0..64).map(|i| call(round * 100 + i))).await;
        for (st, body) in &results {
            assert_eq!(*st, 200, "round {round}: {body}");
            assert!(body.contains("alice"), "round {round}: {body}");
        }
        assert_eq!(
            s.ops[0].token_requests().await,
            before + 1,
            "round {round}: not exactly one refresh"
        );
    }
    assert_eq!(
        s.connections()[0]["status"],
        "active",
        "the grant was revoked (reuse detected?)"
    );
    let audit: Vec<serde_json::Value> =
        serde_json::from_str(&s.inst.ok(&["audit", "list", "--json"], b"")).unwrap();
    let refreshed = audit
        .iter()
        .filter(|e| e["action"] == "oauth.refresh" && e["outcome"] == "ok")
        .count();
    assert_eq!(refreshed as u64, cycles, "{audit:?}");
    println!(
        "{cycles} cycles of 64 concurrent calls on an expired {ttl} s token: one token request each, grant intact"
    );
}

/// Login CSRF (RFC 9700 §4.7.1): a login form posted from another site is refused, so nobody
/// can sign a victim's browser into their own account.
#[tokio::test]
async fn login_posted_from_another_site_is_refused() {
    let s = setup(1);
    s.inst.ok(&["user", "add", "mallory"], b"");
    let link = s
        .inst
        .ok(&["user", "link", "mallory"], b"")
        .trim()
        .to_owned();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (h, v) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = http
            .post(format!("{}/login", s.base))
            .header(h, v)
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{h}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    // The link was not spent by the refused attempts.
    let r = http
        .post(format!("{}/login", s.base))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

impl Op {
    async fn stat(&self, key: &str) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/test/stats", self.issuer()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[key].as_u64().unwrap_or(0)
    }
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn audit_entries(s: &Setup, action: &str, outcome: &str) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&s.inst.ok(&["audit", "list", "--json"], b"")).unwrap();
    all.into_iter()
        .filter(|e| e["action"] == action && e["outcome"] == outcome)
        .collect()
}

async fn whoami(s: &Setup, token: &str, id: u64) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/mcp/files", s.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(
            serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"whoami","arguments":{}}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.text().await.unwrap())
}

/// The DPoP-only MCP resource server (tests/interop/dpop-upstream.mjs) on `port`, checking
/// tokens by introspection at `issuer`.
struct DpopUpstream {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl DpopUpstream {
    fn start(port: u16, issuer: &str) -> Self {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dpop-upstream.log");
        let child = Command::new("node")
            .arg(root.join("dpop-upstream.mjs"))
            .env("PORT", port.to_string())
            .env("ISSUER", issuer)
            .env("CLIENT_ID", "scopegate")
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("dpop-upstream.err")).unwrap())
            .spawn()
            .unwrap();
        harness::wait_until_ready(&log, "the DPoP upstream", Duration::from_secs(30));
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/test/stats", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, what: &str) {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/test/{what}", self.port))
            .send()
            .await
            .unwrap();
    }
}

impl Drop for DpopUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scheduler refreshes ahead of use (4 s tokens, refreshed at about 80%): a steady agent
/// load never meets an expired token, so the introspecting upstream never answers 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_keeps_a_steady_load_free_of_401s() {
    let (soak, ttl) = (
        env_u64("SCOPEGATE_SOAK_SECS", 14),
        env_u64("SCOPEGATE_SOAK_TTL", 4),
    );
    let issuer = Arc::new(tokio::sync::OnceCell::new());
    let up = introspecting_upstream(issuer.clone()).await;
    let s = setup_with(1, ttl, &format!("http://127.0.0.1:{up}/mcp"));
    issuer.set(s.ops[0].issuer()).unwrap();
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let token = s
        .inst
        .ok(&["agent", "add", "steady", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(soak) {
        calls += 1;
        let (st, body) = whoami(&s, &token, calls).await;
        assert_eq!(st, 200, "call {calls}: {body}");
        assert!(body.contains("alice"), "call {calls}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refreshed: Vec<_> = audit_entries(&s, "oauth.refresh", "ok")
        .into_iter()
        .filter(|e| e["details"]["trigger"] == "scheduled")
        .collect();
    assert!(
        refreshed.len() as u64 >= soak / ttl - 1,
        "{soak} s of {ttl} s tokens needs at least {} refreshes ahead of use: {refreshed:?}",
        soak / ttl - 1
    );
    let calls_refused = audit_entries(&s, "mcp.call", "upstream_401").len();
    assert_eq!(calls_refused, 0, "an agent call met an expired token");
    assert_eq!(s.connections()[0]["status"], "active");
    // The scheduler comes first: agents rarely (ideally never) wait for a refresh themselves.
    let on_demand = audit_entries(&s, "oauth.refresh", "ok").len() - refreshed.len();
    assert!(
        on_demand <= 1 + refreshed.len() / 4,
        "{on_demand} refreshes were made by agent calls, {} by the scheduler",
        refreshed.len()
    );
    println!(
        "soak: {soak} s, {ttl} s tokens, {calls} calls all answered 200 by the introspecting upstream, {} scheduled and {on_demand} on-demand refreshes, 0 upstream 401s",
        refreshed.len()
    );
}

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// I17 against oidc-provider: a token endpoint answering 503 is backed off (visible in the
/// audit log) and revokes nobody; once it recovers, refresh resumes. Then the user revokes the
/// app at the provider: three spaced strikes, `needs_reauth` with the reason, a revocation
/// attempt at the provider, and the agent's next call gets the reconnect elicitation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_backs_off_and_a_revoked_grant_ends_in_reconnect() {
    let issuer = Arc::new(tokio::sync::OnceCell::new());
    let up = introspecting_upstream(issuer.clone()).await;
    // Strikes 3 s apart here (5 minutes by default).
    let s = setup_limits(
        1,
        4,
        &format!("http://127.0.0.1:{up}/mcp"),
        "strike_interval_secs = 3\n",
    );
    let op = &s.ops[0];
    issuer.set(op.issuer()).unwrap();
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let token = s
        .inst
        .ok(&["agent", "add", "worker", "--user", "alice"], b"")
        .trim()
        .to_owned();
    assert_eq!(whoami(&s, &token, 1).await.0, 200);

    // `SCOPEGATE_OUTAGE_SECS` keeps the provider down longer (300 for the issue's run).
    let outage = Duration::from_secs(env_u64("SCOPEGATE_OUTAGE_SECS", 0));
    let outage_began = Instant::now();
    op.mode(serde_json::json!({"token_unavailable": true}))
        .await;
    wait_for("two 503 answers", Duration::from_secs(40), async || {
        op.stat("unavailable_answers").await >= 2
    })
    .await;
    while outage_began.elapsed() < outage {
        // Agents keep calling during the outage; none of it may revoke anything.
        let _ = whoami(&s, &token, 1).await;
        assert_eq!(
            s.connections()[0]["status"],
            "active",
            "an outage revoked a connection"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let transient = audit_entries(&s, "oauth.refresh", "transient");
    assert!(transient.len() >= 2, "{transient:?}");
    let waits: Vec<u64> = transient
        .iter()
        .map(|e| {
            e["details"]["retry_in_secs"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(waits[1] > waits[0], "backoff grows: {waits:?}");
    assert!(
        waits.iter().all(|w| *w <= 15 * 60 + 15 * 60 / 4),
        "backoff is capped at 15 min (+25% jitter): {waits:?}"
    );
    println!(
        "outage of {} s: {} answers of 503, {} transient audit entries, waits {waits:?} s, no strike",
        outage_began.elapsed().as_secs(),
        op.stat("unavailable_answers").await,
        transient.len()
    );
    let c = &s.connections()[0];
    assert_eq!(c["status"], "active", "an outage revoked a connection");
    assert!(audit_entries(&s, "oauth.refresh", "rejected").is_empty());

    op.mode(serde_json::json!({})).await;
    let before = audit_entries(&s, "oauth.refresh", "ok").len();
    // The last backoff set before recovery decides when the next attempt goes out.
    let last_wait = waits.last().copied().unwrap_or(0);
    wait_for(
        "refresh after the outage",
        Duration::from_secs(45 + last_wait),
        async || audit_entries(&s, "oauth.refresh", "ok").len() > before,
    )
    .await;
    let (st, body) = whoami(&s, &token, 2).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("alice"));

    let revocations = op.stat("revocations").await;
    reqwest::Client::new()
        .post(format!("{}/test/revoke-grants", op.issuer()))
        .send()
        .await
        .unwrap();
    wait_for("needs_reauth", Duration::from_secs(60), async || {
        s.connections()[0]["status"] == "needs_reauth"
    })
    .await;
    let rejected = audit_entries(&s, "oauth.refresh", "rejected");
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let times: Vec<time::OffsetDateTime> = rejected
        .iter()
        .map(|e| {
            time::OffsetDateTime::parse(
                e["time"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    assert!(
        times[2] - times[0] >= time::Duration::seconds(9),
        "strikes were not spaced (3 s, then 6 s): {times:?}"
    );
    assert!(
        op.stat("revocations").await > revocations,
        "no revocation attempt at the provider"
    );
    let (st, body) = whoami(&s, &token, 3).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32042, "{body}");
}

/// I16 under SIGKILL: a refresh is started and the gateway killed at a seeded random moment
/// (`SCOPEGATE_KILL_RUNS` runs, 30 here; the issue's run used 100), then restarted. Every run
/// ends with the connection either working — its access token accepted upstream and its
/// stored refresh token accepted by the provider — or `needs_reauth` with a reason; the
/// restart makes at most one token request by itself (no loop against reuse detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_refresh_loses_nothing_and_never_loops() {
    sigkill_runs(false, env_u64("SCOPEGATE_KILL_RUNS", 30)).await;
}

/// The same with DPoP-bound tokens (`SCOPEGATE_KILL_RUNS_DPOP`, 10 here): a refresh answer
/// adopted after the crash keeps its key and its binding, so no call ever goes out as Bearer
/// and every proof verifies at the DPoP-only upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_dpop_refresh_keeps_the_binding() {
    sigkill_runs(true, env_u64("SCOPEGATE_KILL_RUNS_DPOP", 10)).await;
}

async fn sigkill_runs(dpop: bool, runs: u64) {
    let seed = harness::seed("SCOPEGATE_KILL_SEED", 0x5eed_cafe);
    let mut rng = harness::Rng::new(seed);
    let issuer = Arc::new(tokio::sync::OnceCell::new());
    let up = if dpop {
        free_port()
    } else {
        introspecting_upstream(issuer.clone()).await
    };
    // Long-lived tokens and no start-up spreading: the only refreshes are the ones started
    // here and the recovery of a lost outcome at start.
    let mut s = setup_env(
        1,
        3600,
        &format!("http://127.0.0.1:{up}/mcp"),
        "refresh_startup_spread_secs = 0\n",
        if dpop { &[("DPOP", "1")] } else { &[] },
    );
    let op_issuer = s.ops[0].issuer();
    issuer.set(op_issuer.clone()).unwrap();
    let dpop_upstream = dpop.then(|| DpopUpstream::start(up, &op_issuer));
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    let token = s
        .inst
        .ok(&["agent", "add", "worker", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let live = |s: &Setup| {
        s.connections()
            .into_iter()
            .find(|c| c["status"] != "revoked")
            .unwrap()
    };
    let (mut working, mut reauth, mut killed_mid_flight) = (0, 0, 0);
    for i in 0..runs {
        let id = live(&s)["id"].as_str().unwrap().to_owned();
        let mut child = s
            .inst
            .command()
            .args(["connection", "refresh", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_micros(rng.below(60_000))).await;
        s.server.kill9();
        let _ = child.wait();
        let before = s.ops[0].token_requests().await;
        let challenged = s.ops[0].stat("dpop_nonce_errors").await;
        s.server = s.inst.start_with(|c| {
            c.env("SCOPEGATE_TEST_CORP_SECRET", CLIENT_SECRET);
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let settled = loop {
            let c = live(&s);
            let in_flight = c["refresh"]["in_flight_since"].is_string();
            if c["status"] == "needs_reauth" || (c["status"] == "active" && !in_flight) {
                break c;
            }
            assert!(Instant::now() < deadline, "run {i}: never settled: {c}");
            if in_flight {
                killed_mid_flight += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // A nonce challenge (a restart forgets the provider's nonce) was not processed: the
        // request it answered is not counted.
        let by_itself = s.ops[0].token_requests().await
            - before
            - (s.ops[0].stat("dpop_nonce_errors").await - challenged);
        assert!(
            by_itself <= 1,
            "run {i}: the restart made {by_itself} token requests"
        );
        if settled["status"] == "needs_reauth" {
            let reason = settled["status_reason"].as_str().unwrap_or("");
            assert!(!reason.is_empty(), "run {i}: needs_reauth without a reason");
            reauth += 1;
            let mut b = s.browser("alice").await;
            let cb = s.authorize(&mut b, "files").await;
            assert_eq!(b.get(&cb).await.status, 303, "run {i}: reconnect failed");
            continue;
        }
        // Working: the access token is accepted upstream, and the refresh token the vault
        // holds is the provider's current one (a lost rotation would fail here).
        let (st, body) = whoami(&s, &token, 1000 + i).await;
        assert_eq!(st, 200, "run {i}: {body}");
        assert!(body.contains("alice"), "run {i}: {body}");
        let id = settled["id"].as_str().unwrap().to_owned();
        let out = s.inst.run(&["connection", "refresh", &id], b"");
        assert!(
            out.status.success(),
            "run {i}: the stored refresh token was not accepted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        working += 1;
    }
    let recovered = audit_entries(&s, "oauth.refresh", "ok")
        .iter()
        .filter(|e| e["details"]["recovered"].is_string())
        .count();
    println!(
        "{runs} SIGKILLs during {}refresh (seed {seed:#x}): {working} working ({recovered} by adopting a sealed answer), {reauth} needs_reauth with a reason, {killed_mid_flight} polls saw a marker",
        if dpop { "DPoP " } else { "" }
    );
    assert_eq!(working + reauth, runs);
    if let Some(u) = dpop_upstream {
        let st = u.stats().await;
        assert_eq!(
            st["bearer_refused"], 0,
            "a bound token went out as Bearer: {st}"
        );
        assert_eq!(st["failures"], serde_json::json!([]), "{st}");
        assert!(live(&s)["dpop_jkt"].is_string());
    }
}

/// Issue 4's interop: the official Python MCP SDK server behind the gateway as an OAuth
/// resource server, validating every token it receives by introspection at the same
/// oidc-provider (through the SDK's bearer-auth middleware); the official Python SDK client in
/// front with an agent token, in both eras. `whoami` reports the connected user (the token's
/// subject), and the agent's token never reaches upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resource_server_validates_gateway_tokens_by_introspection() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let up = free_port();
    let s = setup_with(1, 3600, &format!("http://127.0.0.1:{up}/mcp"));
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("upstream.log");
    let mut upstream = Command::new("python3")
        .arg(root.join("mcp_upstream.py"))
        .env("PORT", up.to_string())
        .env("INTROSPECT", s.ops[0].issuer())
        .env("INTROSPECT_CLIENT", "scopegate")
        .env("INTROSPECT_SECRET", CLIENT_SECRET)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("upstream.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", up)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Python upstream did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a token the SDK's middleware refuses: the upstream really checks.
    let bare = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{up}/mcp"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    assert_eq!(b.get(&cb).await.status, 303);
    s.inst.ok(
        &[
            "profile",
            "add",
            "no-writes",
            "--allow",
            "files:whoami",
            "files:headers",
        ],
        b"",
    );
    let token = s
        .inst
        .ok(
            &[
                "agent",
                "add",
                "py",
                "--user",
                "alice",
                "--profile",
                "no-writes",
            ],
            b"",
        )
        .trim()
        .to_owned();
    let introspections = s.ops[0].stat("introspections").await;
    let url = format!("{}/mcp/files", s.base);
    for mode in ["legacy", "auto"] {
        let out = tokio::process::Command::new("python3")
            .arg(root.join("mcp_client.py"))
            .args([&url, &token, mode])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        println!(
            "introspecting Python SDK upstream, {mode}: negotiated {}",
            v["protocol"]
        );
        assert_eq!(v["whoami"], "alice", "{mode}: {v}");
        assert_eq!(
            v["tools"],
            serde_json::json!(["headers", "whoami"]),
            "{mode}"
        );
        assert_eq!(
            v["write_file"]["is_error"], true,
            "{mode}: a denied tool ran"
        );
        let headers = serde_json::to_string(&v["headers"]).unwrap();
        assert!(
            !headers.contains(&token[4..]),
            "{mode}: the agent token reached upstream"
        );
        assert!(
            v["headers"]["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Bearer ")),
            "{mode}: no bearer token arrived: {headers}"
        );
    }
    assert!(
        s.ops[0].stat("introspections").await > introspections,
        "the upstream did not introspect"
    );
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// RFC 9449 against oidc-provider's DPoP (nonces required) and a DPoP-only MCP resource
/// server (the TypeScript SDK behind proof verification with `jose` and introspection): the
/// authorization request names the key (`dpop_jkt`); the code exchange answers the token
/// endpoint's nonce challenge with exactly one retry; the tokens are bound (`cnf.jkt`); every
/// agent call carries `Authorization: DPoP` and a fresh proof (never Bearer), answers the
/// resource server's nonce challenges once each, and the on-demand refresh is proven with the
/// same key. No nonce challenge is ever a strike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_binds_tokens_to_a_key_and_answers_nonce_challenges() {
    let up = free_port();
    let ttl = 5;
    let s = setup_env(
        1,
        ttl,
        &format!("http://127.0.0.1:{up}/mcp"),
        "proactive_refresh = false\n",
        &[("DPOP", "1")],
    );
    let op = &s.ops[0];
    let upstream = DpopUpstream::start(up, &op.issuer());
    let up_stats = async || upstream.stats().await;

    // Connect: the code is bound to the key, and the exchange is proven with it.
    let mut b = s.browser("alice").await;
    let cb = s.authorize(&mut b, "files").await;
    let done = b.get(&cb).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(op.stat("auth_with_dpop_jkt").await, 1);
    assert_eq!(
        (
            op.stat("token_requests").await,
            op.stat("dpop_token_requests").await,
            op.stat("dpop_nonce_errors").await,
        ),
        (2, 2, 1),
        "one nonce challenge, one retry with the nonce, both with a proof"
    );
    assert!(op.stat("dpop_bound_tokens").await >= 1);
    let conn = s.connections()[0].clone();
    let jkt = conn["dpop_jkt"]
        .as_str()
        .expect("the connection records its key")
        .to_owned();
    assert_eq!(jkt.len(), 43, "a base64url SHA-256 thumbprint: {jkt}");

    let token = s
        .inst
        .ok(&["agent", "add", "dpop-agent", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let call = async |id: u64| whoami(&s, &token, id).await;
    let whoami_ok = |(st, body): &(u16, String)| {
        assert_eq!(*st, 200, "{body}");
        assert!(body.contains("alice"), "{body}");
        assert!(
            body.contains(&format!("jkt={jkt}")),
            "bound to another key: {body}"
        );
        assert!(body.contains("token_type=DPoP"), "{body}");
    };
    // First call: the resource server challenges for a nonce; one retry answers it.
    whoami_ok(&call(1).await);
    let st = up_stats().await;
    assert_eq!(
        (st["nonce_challenges"].as_u64(), st["ok"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    // The nonce is remembered: no challenge for the next calls, each with a fresh proof
    // (the upstream refuses a replayed jti).
    for i in 2..=6 {
        whoami_ok(&call(i).await);
    }
    let st = up_stats().await;
    assert_eq!(
        (st["nonce_challenges"].as_u64(), st["ok"].as_u64()),
        (Some(1), Some(6)),
        "{st}"
    );
    // A rotated nonce: exactly one more challenge, answered once.
    upstream.post("rotate-nonce").await;
    whoami_ok(&call(7).await);
    let st = up_stats().await;
    assert_eq!(
        (st["nonce_challenges"].as_u64(), st["ok"].as_u64()),
        (Some(2), Some(7)),
        "{st}"
    );

    // The token expires: the agent's call refreshes it on demand, proven with the same key,
    // and the new token is bound to it too.
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    let before = op.stat("token_requests").await;
    whoami_ok(&call(8).await);
    let after = op.stat("token_requests").await;
    assert!(after > before, "no refresh happened");
    assert_eq!(
        op.stat("dpop_token_requests").await,
        after,
        "a token request went out without a DPoP proof"
    );
    let c = s.connections()[0].clone();
    assert_eq!(
        c["dpop_jkt"], jkt,
        "the refreshed tokens are bound to the same key"
    );
    assert_eq!(c["strikes"], 0);
    assert_eq!(c["status"], "active");
    assert_eq!(audit_entries(&s, "oauth.refresh", "ok").len(), 1);
    assert!(audit_entries(&s, "oauth.refresh", "rejected").is_empty());
    let grant_errors: serde_json::Value = reqwest::get(format!("{}/test/stats", op.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        grant_errors["grant_errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e == "use_dpop_nonce"),
        "the provider refused something else: {grant_errors}"
    );

    // A server that challenges every proof: one retry per call, no refresh (the token is
    // fine), no strike, and a clear answer.
    upstream.post("always-challenge").await;
    let (requests, token_requests) = (
        up_stats().await["requests"].as_u64().unwrap(),
        op.stat("token_requests").await,
    );
    let (st, body) = call(9).await;
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("DPoP proof"), "{body}");
    assert_eq!(up_stats().await["requests"].as_u64().unwrap(), requests + 2);
    // No refresh because of it (a refresh due by the token's age is another matter).
    let after_401 = audit_entries(&s, "oauth.refresh", "ok")
        .into_iter()
        .filter(|e| e["details"]["trigger"] == "after_401")
        .count();
    assert_eq!(after_401, 0, "a nonce challenge forced a refresh");
    assert!(op.stat("token_requests").await <= token_requests + 1);
    assert_eq!(s.connections()[0]["strikes"], 0);

    // Never Bearer, and every proof verified.
    let st = up_stats().await;
    assert_eq!(st["bearer_refused"], 0, "{st}");
    assert_eq!(st["failures"], serde_json::json!([]), "{st}");
    println!(
        "DPoP: {after} token requests all with proofs ({} nonce challenges at the token endpoint), {} resource calls, {} resource nonce challenges, 0 Bearer",
        op.stat("dpop_nonce_errors").await,
        st["ok"],
        st["nonce_challenges"]
    );
}
