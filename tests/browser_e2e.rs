//! The connect page end to end in a real headless browser (Debian `chromium` through
//! playwright-core) against `serve --dev`: login link → Connect → consent → connected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

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
    let out_path = tmp.path().join("dev.out");
    let mut child = std::process::Command::new(harness::bin())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = std::fs::read_to_string(&out_path).unwrap();
        if out.contains("scopegate: ready") {
            break out;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
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
