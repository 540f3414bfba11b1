//! The connect page end to end in a real headless browser (Debian `chromium` through
//! playwright-core) against `serve --dev`: login link → Connect → consent → connected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

#[test]
fn connect_page_in_headless_chromium() {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        interop.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/interop (scripts/test.sh does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "install Debian's chromium (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, out) = harness::start_dev(tmp.path());
    let link = out
        .lines()
        .find_map(|l| l.split(": ").last().filter(|x| x.contains("/login?token=")))
        .unwrap()
        .to_owned();
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("scopegate: admin commands: export SCOPEGATE_DATA_DIR="))
        .unwrap()
        .to_owned();
    let shots = std::env::var("SCOPEGATE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let run = std::process::Command::new("node")
        .arg(interop.join("browser-e2e.mjs"))
        .arg(&link)
        .arg(&shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "browser run failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("connected=demo") && stdout.contains("demo.read"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("demo.write"),
        "an unticked scope was recorded: {stdout}"
    );
    let list = std::process::Command::new(harness::bin())
        .args(["connection", "list", "--json"])
        .env("SCOPEGATE_DATA_DIR", &data)
        .output()
        .unwrap();
    let conns: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["service"], "demo");
    assert_eq!(conns[0]["status"], "active");
    assert_eq!(conns[0]["scopes"], serde_json::json!(["demo.read"]));
    harness::signal(child.id(), "TERM");
    assert!(
        harness::wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap()
            .success()
    );
}

/// The README's first command ends in a working tool call: `serve --dev`, connect `demo` as a
/// browser would, then the printed agent token calls `whoami` through the gateway and the demo
/// upstream reports the demo account behind the user's connection.
#[test]
fn dev_mode_loop_ends_in_a_working_tool_call() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, out) = harness::start_dev(tmp.path());
    let link = out
        .lines()
        .find_map(|l| l.split(": ").last().filter(|x| x.contains("/login?token=")))
        .unwrap()
        .to_owned();
    let token = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("scopegate: agent token for MCP clients (user demo, no profile): ")
        })
        .unwrap()
        .to_owned();
    let base = link.split("/login").next().unwrap().to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let call = |body: serde_json::Value| {
        let http = http.clone();
        let (base, token) = (base.clone(), token.clone());
        async move {
            let r = http
                .post(format!("{base}/mcp/demo"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2025-11-25")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let whoami = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
    rt.block_on(async {
        // Before connecting: the agent is told, in-band, where the user connects.
        let v = call(whoami.clone()).await;
        assert_eq!(v["error"]["code"], -32042, "{v}");
        assert_eq!(
            v["error"]["data"]["elicitations"][0]["url"],
            format!("{base}/connect")
        );
        // Connect as the browser would (the demo provider's consent, demo.read only).
        assert_eq!(
            browser::connect_demo(&base, &link, "ada", &["demo.read"]).await,
            303
        );
        // Now the tool call works, with the user's token, not the agent's.
        let v = call(whoami).await;
        assert_eq!(
            v["result"]["content"][0]["text"], "You are demo account ada with scopes [demo.read].",
            "{v}"
        );
        let v = call(serde_json::json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})).await;
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 3);
    });
    harness::signal(child.id(), "TERM");
    assert!(
        harness::wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap()
            .success()
    );
}
