//! The proxy between the official MCP Python SDK on both sides: an `MCPServer` upstream that
//! accepts only the user's key, and the SDK `Client` in front with an agent token, in the
//! handshake era (2025-06-18 / 2025-11-25, sessions) and the current stateless revision; and
//! the official TypeScript SDK client (npm @modelcontextprotocol/sdk) against the same.
//! Needs `pip install -r tests/interop/requirements.txt` (scripts/test.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use browser::free_port;
use harness::Instance;

const KEY: &str = "alice-upstream-key-2b9c7e";

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interop(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(file)
}

#[test]
fn python_sdk_client_and_server_through_the_gateway_in_both_eras() {
    let probe = Command::new("python3")
        .args(["-c", "import mcp, httpx2, uvicorn"])
        .status()
        .unwrap();
    assert!(
        probe.success(),
        "the MCP Python SDK is not installed: pip install -r tests/interop/requirements.txt (scripts/test.sh does)"
    );
    let up = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("upstream.log");
    let _upstream = Child(
        Command::new("python3")
            .arg(interop("mcp_upstream.py"))
            .env("PORT", up.to_string())
            .env("EXPECTED_KEY", KEY)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gw = free_port();
    let inst = Instance::init_with(&format!(
        "listen = \"127.0.0.1:{gw}\"\n[services.files]\nkind = \"api_key\"\nmcp_url = \"http://127.0.0.1:{up}/mcp\"\nheader = \"X-API-Key\"\n"
    ));
    let _server = inst.start();
    inst.ok(&["user", "add", "alice"], b"");
    inst.ok(
        &["apikey", "set", "files", "--user", "alice"],
        KEY.as_bytes(),
    );
    inst.ok(
        &[
            "profile",
            "add",
            "nowrite",
            "--allow",
            "files:whoami",
            "files:headers",
        ],
        b"",
    );
    let token = inst
        .ok(
            &[
                "agent",
                "add",
                "py",
                "--user",
                "alice",
                "--profile",
                "nowrite",
            ],
            b"",
        )
        .trim()
        .to_owned();
    // Wait for uvicorn.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", up)).is_err() {
        assert!(
            Instant::now() < deadline,
            "upstream did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{gw}/mcp/files");
    for mode in ["legacy", "auto"] {
        let out = Command::new("python3")
            .arg(interop("mcp_client.py"))
            .args([&url, &token, mode])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        eprintln!("{mode}: negotiated {}", v["protocol"]);
        assert_eq!(
            v["whoami"], "alice",
            "{mode}: the user's key did not arrive"
        );
        assert_eq!(
            v["tools"],
            serde_json::json!(["headers", "whoami"]),
            "{mode}: tools/list was not filtered"
        );
        assert_eq!(
            v["write_file"]["is_error"], true,
            "{mode}: a denied tool ran"
        );
        let headers = v["headers"].as_object().unwrap();
        assert!(
            !headers.contains_key("authorization"),
            "{mode}: an Authorization header reached upstream: {headers:?}"
        );
        assert!(
            !serde_json::to_string(headers)
                .unwrap()
                .contains(&token[4..]),
            "{mode}: the agent token reached upstream"
        );
        if mode == "auto" {
            assert!(
                v["protocol"].as_str().unwrap() >= "2026-07-28",
                "{mode}: {}",
                v["protocol"]
            );
        }
    }
    // The official TypeScript SDK client too (npm @modelcontextprotocol/sdk).
    let out = Command::new("node")
        .arg(interop("ts-client.mjs"))
        .args([&url, &token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "typescript: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!(
        "typescript: negotiated {} (session: {})",
        v["protocol"], v["session"]
    );
    assert_eq!(
        v["whoami"], "alice",
        "typescript: the user's key did not arrive"
    );
    assert_eq!(v["tools"], serde_json::json!(["headers", "whoami"]));
    assert_eq!(v["write_file"]["is_error"], true);
    let headers = v["headers"].as_object().unwrap();
    assert!(
        !headers.contains_key("authorization"),
        "typescript: {headers:?}"
    );
    assert!(
        !serde_json::to_string(headers)
            .unwrap()
            .contains(&token[4..])
    );
    let denied = |a: &str| a.contains("tool=\"write_file\"") && a.contains("denied");
    let audit = inst.audit_until(denied);
    assert!(denied(&audit), "{audit}");
}
