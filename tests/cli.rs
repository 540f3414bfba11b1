//! The real binary end to end: init, serve, admin subcommands over the socket, and what a
//! self-hoster sees when something is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use base64::Engine;
use harness::{Instance, contains, raw_http};

fn sha(path: &std::path::Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

/// I2 through the CLI: exact message, non-zero exit, neither file written.
#[test]
fn i2_wrong_passphrase_exits_with_the_exact_message_and_writes_nothing() {
    let mut inst = Instance::init();
    {
        let _s = inst.start();
        inst.ok(&["user", "add", "alice"], b"");
        inst.ok(
            &["apikey", "set", "search", "--user", "alice"],
            b"some-key\n",
        );
    }
    let vault = inst.dir.join("secrets.redb");
    let store = inst.dir.join("scopegate.redb");
    // The SIGKILLed server left both files unclean; one good start and stop cleans them.
    inst.start().term();
    let (before_v, before_s) = (sha(&vault), sha(&store));
    inst.pass = "not the passphrase".into();
    let out = inst.run(&["serve"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l == "scopegate: wrong passphrase"),
        "{err}"
    );
    assert_eq!(sha(&vault), before_v, "the vault file changed");
    assert_eq!(sha(&store), before_s, "the store file changed");
}

/// I4: a planted API key (and its base64 and hex forms) appears in no raw file, log line,
/// command output, audit listing or error message.
#[test]
fn i4_canary_api_key_never_appears_outside_the_vault_ciphertext() {
    const CANARY: &str = "sgcanary-7f3a9c2e5b1d4068a9e2c4f6b8d0e1a3";
    let inst = Instance::init();
    let mut outputs = String::new();
    let mut s = inst.start();
    outputs += &inst.ok(&["user", "add", "alice"], b"");
    outputs += &inst.ok(
        &["apikey", "set", "search", "--user", "alice"],
        format!("{CANARY}\n").as_bytes(),
    );
    // Rotate with a second canary-derived key, and provoke every error path with the canary.
    outputs += &inst.ok(
        &["apikey", "set", "search", "--user", "alice"],
        format!("{CANARY}-2").as_bytes(),
    );
    for args in [
        &["apikey", "set", "nosuch", "--user", "alice"][..],
        &["apikey", "set", "search", "--user", "nobody"][..],
    ] {
        let out = inst.run(args, CANARY.as_bytes());
        assert!(!out.status.success());
        outputs += &String::from_utf8_lossy(&out.stdout);
        outputs += &String::from_utf8_lossy(&out.stderr);
    }
    let out = inst.run(
        &["apikey", "set", "search", "--user", "alice"],
        format!("{CANARY} with space").as_bytes(),
    );
    assert!(!out.status.success());
    outputs += &String::from_utf8_lossy(&out.stderr);
    for args in [
        &["connection", "list"][..],
        &["connection", "list", "--json"][..],
        &["audit", "list"][..],
        &["audit", "list", "--json"][..],
        &["audit", "verify"][..],
        &["user", "list", "--json"][..],
    ] {
        outputs += &inst.ok(args, b"");
    }
    let addr = s.addr();
    outputs += &raw_http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(s.term().success());
    outputs += &s.logs();
    assert!(
        outputs.contains("op=\"apikey_set\"") || outputs.contains("op=apikey_set"),
        "server logs were not captured: {outputs}"
    );

    let forms = [
        CANARY.as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(CANARY)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(CANARY)
            .into_bytes(),
        hex(CANARY.as_bytes()).into_bytes(),
        hex(CANARY.as_bytes()).to_uppercase().into_bytes(),
        // a distinctive middle part, in case something truncates
        b"5b1d4068a9e2".to_vec(),
    ];
    for form in &forms {
        assert!(
            !contains(outputs.as_bytes(), form),
            "canary form {:?} in output",
            String::from_utf8_lossy(form)
        );
        for (path, bytes) in harness::all_files(inst.tmp.path()) {
            assert!(
                !contains(&bytes, form),
                "canary form {:?} in {}",
                String::from_utf8_lossy(form),
                path.display()
            );
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn second_serve_fails_fast_and_a_stale_socket_is_replaced() {
    let inst = Instance::init();
    let mut first = inst.start();
    inst.ok(&["user", "add", "alice"], b"");
    let socket = inst.dir.join("admin.sock");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&socket).unwrap());

    let t = Instant::now();
    let out = inst.run(&["serve"], b"");
    assert!(!out.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "second serve took {:?}",
        t.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another scopegate process is using"), "{err}");
    // The first is untouched: same socket, still answering.
    assert_eq!(
        ino,
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&socket).unwrap())
    );
    assert!(inst.ok(&["user", "list"], b"").contains("alice"));

    first.kill9();
    assert!(
        socket.exists(),
        "SIGKILL should leave the socket file behind"
    );
    let out = inst.run(&["user", "list"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scopegate server is running"));
    let _second = inst.start();
    assert!(inst.ok(&["user", "list"], b"").contains("alice"));
}

/// Another uid is refused by the peer-credential check even when the file modes would let it
/// connect (the test opens them up on purpose). Needs root to switch uid; skipped otherwise.
#[test]
fn another_uid_is_refused_on_the_admin_socket() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
    if !is_root || !setpriv {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let inst = Instance::init();
    let _s = inst.start();
    let socket = inst.dir.join("admin.sock");
    for p in [inst.tmp.path(), inst.dir.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &harness::bin(),
            "user",
            "add",
            "mallory",
        ])
        .env("SCOPEGATE_DATA_DIR", &inst.dir)
        .output()
        .unwrap();
    std::fs::set_permissions(&inst.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uid 65534 may not use this admin socket"),
        "{err}"
    );
    assert!(!inst.ok(&["user", "list"], b"").contains("mallory"));
}

#[test]
fn audit_verify_through_the_socket_and_on_a_tampered_copy() {
    let inst = Instance::init();
    let mut s = inst.start();
    for n in ["a1", "a2", "a3"] {
        inst.ok(&["user", "add", n], b"");
    }
    // While serving, the store is locked: success here means the socket answered.
    let online = inst.ok(&["audit", "verify"], b"");
    assert!(online.contains("audit log intact: 6 entries"), "{online}");
    assert!(s.term().success());
    let offline = inst.ok(&["audit", "verify"], b"");
    assert!(offline.contains("audit log intact: 7 entries"), "{offline}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&inst.ok(&["audit", "list", "--json"], b"")).unwrap();
    assert_eq!(list.len(), 7);
    assert_eq!(list[2]["action"], "serve.start");

    // A copy of the folder, edited: verify fails, exits non-zero and names the entry.
    let copy = inst.tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(inst.dir.join("scopegate.redb"), copy.join("scopegate.redb")).unwrap();
    scopegate::store::testing::rewrite_audit(&copy.join("scopegate.redb"), |rows| {
        let text = String::from_utf8(rows[4].1.clone())
            .unwrap()
            .replace("a2", "zz");
        rows[4].1 = text.into_bytes();
    })
    .unwrap();
    let out = std::process::Command::new(harness::bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit entry 5") && err.contains("edited"),
        "{err}"
    );
}

#[test]
fn init_refuses_to_overwrite_and_serve_refuses_open_permissions() {
    let inst = Instance::init();
    let out = inst.run(&["init"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));

    std::fs::set_permissions(
        inst.dir.join("secrets.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = inst.run(&["serve"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secrets.redb") && err.contains("0644"),
        "{err}"
    );
    std::fs::set_permissions(
        inst.dir.join("secrets.redb"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&inst.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = inst.run(&["serve"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 700"));
}

#[test]
fn no_passphrase_source_is_a_clear_error() {
    let inst = Instance::init();
    let out = inst
        .command()
        .env_remove("SCOPEGATE_PASSPHRASE")
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SCOPEGATE_PASSPHRASE_FILE"));
    // From a file, with its trailing newline.
    let f = inst.tmp.path().join("pass");
    std::fs::write(&f, format!("{}\n", harness::PASS)).unwrap();
    let mut s = inst.start_with(|c| {
        c.env_remove("SCOPEGATE_PASSPHRASE")
            .env("SCOPEGATE_PASSPHRASE_FILE", &f);
    });
    assert!(s.term().success());
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let inst = Instance::init_with(
        "listen = \"127.0.0.1:0\"\n[services.s]\nkind = \"api_key\"\nmcp_url = \"http://example.com/mcp\"\n",
    );
    let out = inst.run(&["serve"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("scopegate.toml")
            && err.contains("services.s.mcp_url")
            && err.contains("loopback"),
        "{err}"
    );
    std::fs::write(
        inst.dir.join("scopegate.toml"),
        "listen = \"127.0.0.1:0\"\nlisten_typo = 1\n",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&inst.run(&["serve"], b"").stderr).into_owned();
    assert!(
        err.contains("scopegate.toml") && err.contains("listen_typo"),
        "{err}"
    );
}

#[test]
fn user_remove_revokes_connections_and_lists_are_json_arrays() {
    let inst = Instance::init();
    let _s = inst.start();
    inst.ok(&["user", "add", "alice"], b"");
    inst.ok(&["user", "add", "bob"], b"");
    inst.ok(&["apikey", "set", "search", "--user", "alice"], b"k1");
    inst.ok(&["apikey", "set", "files", "--user", "bob"], b"k2");
    let conns: Vec<serde_json::Value> =
        serde_json::from_str(&inst.ok(&["connection", "list", "--json", "--user", "alice"], b""))
            .unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["service"], "search");
    inst.ok(&["user", "remove", "alice"], b"");
    let users: Vec<serde_json::Value> =
        serde_json::from_str(&inst.ok(&["user", "list", "--json"], b"")).unwrap();
    assert_eq!(users.len(), 1);
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&inst.ok(&["connection", "list", "--json"], b"")).unwrap();
    let statuses: Vec<&str> = all.iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["revoked", "active"]);
    let out = inst.run(&["connection", "revoke", "no-such-id"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection with id no-such-id"));
}

#[test]
fn listener_limits_and_graceful_drain() {
    let inst = Instance::init();
    let mut s = inst.start();
    let addr = s.addr();
    let ok = raw_http(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"),
        "{ok}"
    );

    // Header size limit: 431.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = raw_http(addr, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    // Body limit (64 KiB in the test config): 413 from Content-Length, before the body.
    let r = raw_http(addr, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");

    // Header-read timeout (2 s): a client that never finishes its headers is cut off.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "cut after {waited:?}"
    );

    // Graceful drain: SIGTERM with an idle keep-alive connection open still exits promptly.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert!(s.term().success());
    let logs = s.logs();
    assert!(logs.contains("scopegate: stopped"), "{logs}");
    assert!(!inst.dir.join("admin.sock").exists());
    let audit = inst.ok(&["audit", "list"], b"");
    assert!(audit.contains("serve.stop"), "{audit}");
}

#[test]
fn connection_cap_queues_excess_clients() {
    let inst = Instance::init_with(
        &harness::CONFIG.replace("max_connections = 64", "max_connections = 2"),
    );
    let s = inst.start();
    let addr = s.addr();
    use std::io::{Read, Write};
    let hold: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut b = [0u8; 12];
            c.read_exact(&mut b).unwrap();
            c
        })
        .collect();
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 12];
    assert!(
        third.read_exact(&mut b).is_err(),
        "a third connection was served past the cap of 2"
    );
    drop(hold);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
}

#[test]
fn dev_mode_serves_with_nothing_configured_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, out) = harness::start_dev(tmp.path());
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("scopegate: admin commands: export SCOPEGATE_DATA_DIR="))
        .unwrap()
        .to_owned();
    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut c = std::process::Command::new(harness::bin())
            .args(args)
            .env("SCOPEGATE_DATA_DIR", &data)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    run(&["user", "add", "alice"], b"");
    assert!(
        run(
            &["apikey", "set", "demo-search", "--user", "alice"],
            b"demo-key"
        )
        .contains("stored the API key")
    );
    harness::signal(child.id(), "TERM");
    assert!(
        harness::wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap()
            .success()
    );
    assert!(
        !std::path::Path::new(&data).exists(),
        "dev data folder left behind"
    );
}
