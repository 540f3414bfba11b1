//! The console end to end, as an admin uses it: `scopegate console` in a real terminal (tmux,
//! driven with send-keys and read with capture-pane) against a running `serve --dev`. The
//! connections view lists the demo connection; revoking it from the console shows in
//! `connection list --json` and in the console's audit view. Needs tmux (scripts/test.sh
//! installs it); without it this test fails rather than skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[test]
fn console_lists_and_revokes_the_demo_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, out) = harness::start_dev(tmp.path());
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("scopegate: admin commands: export SCOPEGATE_DATA_DIR="))
        .unwrap()
        .to_owned();
    admin(
        &data,
        &["apikey", "set", "demo-search", "--user", "demo"],
        b"demo-key-not-shown",
    );
    let conns: Vec<serde_json::Value> =
        serde_json::from_str(&admin(&data, &["connection", "list", "--json"], b"")).unwrap();
    assert_eq!(conns.len(), 1);
    let id = conns[0]["id"].as_str().unwrap().to_owned();

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
    // The connections view lists the demo user's connection, at 80x24.
    let s = tmux.wait_for(&["Connections", "demo", "demo-search", "active"]);
    assert!(
        !s.contains("demo-key-not-shown"),
        "a secret on screen:\n{s}"
    );

    // Revoke it, with confirmation.
    tmux.keys(&["d"]);
    tmux.wait_for(&["Revoke the connection of demo on demo-search"]);
    tmux.keys(&["y"]);
    tmux.wait_for(&[&format!("revoked connection {id}")]);
    tmux.wait_for(&["revoked"]);
    let conns: Vec<serde_json::Value> =
        serde_json::from_str(&admin(&data, &["connection", "list", "--json"], b"")).unwrap();
    assert_eq!(conns[0]["status"], "revoked", "{conns:?}");
    assert_eq!(conns[0]["status_reason"], "revoked by admin");

    // The audit view (live tail) shows the revocation; the filter finds it.
    tmux.keys(&["BTab"]);
    tmux.wait_for(&["audit log", "connection.revoke"]);
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "action:revoke"]);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&["/action:revoke", "connection.revoke"]);
    assert!(
        !s.contains("apikey.set"),
        "the filter let other actions through:\n{s}"
    );
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["audit entry", &id]);
    tmux.keys(&["Escape"]);

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
