//! The console end to end, as an admin uses it: `scopegate console` in a real terminal (tmux,
//! driven with send-keys and read with capture-pane) against a running `serve --dev`. The
//! connections view lists the demo OAuth connection with its expiry counting down; refresh
//! now makes a token request; a profile is saved unchanged and then narrowed; revoking the
//! connection shows in `connection list --json` and in the console's audit view. Needs tmux (scripts/test.sh
//! installs it); without it this test fails rather than skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux is required for this test (apt-get install tmux; scripts/test.sh does)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "sg"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "sg"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Waits until the screen shows every one of `want`.
    fn wait_for(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if want.iter().all(|w| s.contains(w)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {want:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn admin(data: &str, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new(harness::bin())
        .args(args)
        .env("SCOPEGATE_DATA_DIR", data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{args:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// The `MMmSSs` countdown of the access token's expiry on the demo connection's row.
fn expiry_on(screen: &str) -> Option<String> {
    screen
        .lines()
        .find(|l| l.contains("demo") && l.contains("active"))?
        .split_whitespace()
        .find(|w| {
            w.ends_with('s')
                && w.contains('m')
                && w.bytes().next().is_some_and(|b| b.is_ascii_digit())
        })
        .map(str::to_owned)
}

#[test]
fn console_lists_refreshes_edits_and_revokes_against_serve_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, out) = harness::start_dev(tmp.path());
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("scopegate: admin commands: export SCOPEGATE_DATA_DIR="))
        .unwrap()
        .to_owned();
    let link = out
        .lines()
        .find_map(|l| l.split(": ").last().filter(|x| x.contains("/login?token=")))
        .unwrap()
        .to_owned();
    let base = link.split("/login").next().unwrap().to_owned();
    // The demo user connects `demo` through the browser flow (OAuth, 1-hour tokens).
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(browser::connect_demo(
            &base,
            &link,
            "ada",
            &["demo.read", "demo.write"]
        )),
        303
    );
    let list = || -> Vec<serde_json::Value> {
        serde_json::from_str(&admin(&data, &["connection", "list", "--json"], b"")).unwrap()
    };
    let conns = list();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["service"], "demo");
    let id = conns[0]["id"].as_str().unwrap().to_owned();
    // Two globs for one service: the profile holds them as one rule, `demo:whoami,echo`.
    admin(
        &data,
        &[
            "profile",
            "add",
            "readers",
            "--allow",
            "demo:whoami",
            "--allow",
            "demo:echo",
        ],
        b"",
    );

    let tmux = Tmux {
        socket: tmp.path().join("tmux.sock"),
    };
    let cmd = format!(
        "env SCOPEGATE_DATA_DIR='{data}' NO_COLOR=1 '{}' console",
        harness::bin()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "sg",
        "-x",
        "80",
        "-y",
        "24",
        &cmd,
    ]);
    assert!(
        started.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    // The connections view lists the demo connection, at 80x24, its expiry counting down.
    let s = tmux.wait_for(&["Connections", "demo", "active", "demo.read"]);
    let first = expiry_on(&s).unwrap_or_else(|| panic!("no expiry countdown:\n{s}"));
    assert!(first.starts_with("59m"), "{first}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while expiry_on(&tmux.screen()).as_deref() == Some(first.as_str()) {
        assert!(Instant::now() < deadline, "the expiry did not count down");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Refresh now: a token request at the demo provider, seen in `connection list --json`.
    let before = list()[0]["last_refresh"].clone();
    tmux.keys(&["r"]);
    tmux.wait_for(&[&format!("refreshed connection {id}")]);
    let after = list()[0]["last_refresh"].clone();
    assert!(after.is_string() && after != before, "{before} -> {after}");

    // Profiles: saving a multi-glob rule unchanged round-trips, and an edit narrows it.
    let profile = || -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&admin(&data, &["profile", "list", "--json"], b"")).unwrap();
        v[0]["rules"].clone()
    };
    let rules = profile();
    assert_eq!(rules[0]["tools"], serde_json::json!(["whoami", "echo"]));
    tmux.keys(&["Tab"]);
    tmux.keys(&["Tab"]);
    tmux.wait_for(&["readers", "demo:whoami,echo"]);
    tmux.keys(&["e"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["saved profile readers"]);
    assert_eq!(profile(), rules);
    tmux.keys(&["e"]);
    for _ in 0..",echo".len() {
        tmux.keys(&["BSpace"]);
    }
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["demo:whoami "]);
    assert_eq!(profile()[0]["tools"], serde_json::json!(["whoami"]));

    // Agents: add one on the narrowed profile; its token, shown once, works through the
    // gateway for the allowed tool only; revoking it from the console refuses it at once.
    tmux.keys(&["BTab"]);
    tmux.wait_for(&["agents (1)", "demo-agent"]);
    tmux.keys(&["a"]);
    tmux.keys(&["-l", "ci-bot demo readers"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&["shown this once"]);
    let token = s
        .split(|c: char| c.is_whitespace() || c == '│')
        .find(|w| w.starts_with("sga_"))
        .unwrap_or_else(|| panic!("no token on screen:\n{s}"))
        .to_owned();
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["agents (2)", "ci-bot"]);
    assert!(
        !tmux.screen().contains(&token),
        "the token stayed on screen"
    );
    let call = |tool: &str| -> (u16, String) {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": "hi"}}});
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{base}/mcp/demo"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, body) = call("whoami");
    assert!(status == 200 && body.contains("ada"), "{status} {body}");
    let (status, body) = call("echo");
    assert!(
        status == 200 && body.contains("profile readers does not allow tool echo"),
        "the console's narrowing did not reach the proxy: {status} {body}"
    );
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "ci-bot"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["agents (1 of 2)"]);
    tmux.keys(&["d"]);
    tmux.wait_for(&["Revoke agent ci-bot?"]);
    tmux.keys(&["y"]);
    tmux.wait_for(&["revoked agent ci-bot"]);
    assert_eq!(call("whoami").0, 401);
    // Its row (reloaded after the revoke) shows when it was last seen: the calls above.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tmux.screen();
        if s.lines()
            .any(|l| l.contains("ci-bot") && l.contains("revoked") && l.contains(" ago"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no last-seen time for ci-bot:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.keys(&["Escape"]);
    tmux.keys(&["BTab"]);

    // Revoke the connection, with confirmation.
    tmux.wait_for(&["Connections", "active"]);
    tmux.keys(&["d"]);
    tmux.wait_for(&["Revoke the connection of demo on demo"]);
    tmux.keys(&["y"]);
    tmux.wait_for(&[&format!("revoked connection {id}")]);
    let conns = list();
    assert_eq!(conns[0]["status"], "revoked", "{conns:?}");
    assert_eq!(conns[0]["status_reason"], "revoked by admin");
    // The row itself then says so (the status line above is not the row).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tmux.screen();
        if s.lines()
            .any(|l| l.contains("demo") && l.contains("revoked") && !l.contains(&id))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the row still says active:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The audit view (live tail) shows the revocation; the filter finds it.
    tmux.keys(&["BTab"]);
    tmux.wait_for(&["audit log", "connection.revoke"]);
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "action:revoke"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&["/action:revoke", "connection.revoke"]);
    assert!(
        !s.contains("profile.edit"),
        "the filter let other actions through:\n{s}"
    );
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["audit entry", &id]);
    tmux.keys(&["Escape"]);
    // The chain check, run by the server, reported in the view.
    tmux.keys(&["v"]);
    tmux.wait_for(&["audit verify: intact"]);

    // An API key stored now (R reloads) is listed, and never shown: not in the list, not
    // in its detail, not in the audit view.
    admin(
        &data,
        &["apikey", "set", "demo-search", "--user", "demo"],
        b"demo-key-not-shown",
    );
    tmux.keys(&["Escape"]); // drops the audit filter
    tmux.keys(&["Tab"]);
    tmux.keys(&["R"]);
    let s = tmux.wait_for(&["connections (2)", "demo-search"]);
    assert!(!s.contains("demo-key-not-shown"), "{s}");
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "demo-search"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["connections (1 of 2)"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&["fingerprint: hmac:", "apikey"]);
    assert!(!s.contains("demo-key-not-shown"), "{s}");
    tmux.keys(&["Escape"]);
    tmux.keys(&["Escape"]);
    tmux.keys(&["BTab"]);
    let s = tmux.wait_for(&["apikey.set"]);
    assert!(!s.contains("demo-key-not-shown"), "{s}");

    // q quits and gives the terminal back.
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.run(&["has-session", "-t", "sg"]).status.success() {
        assert!(Instant::now() < deadline, "the console did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    harness::signal(child.id(), "TERM");
    assert!(
        harness::wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap()
            .success()
    );
}
