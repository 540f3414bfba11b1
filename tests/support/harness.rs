//! Runs the real `scopegate` binary against private temporary data folders on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASS: &str = "correct horse battery staple";

pub const CONFIG: &str = r#"
listen = "127.0.0.1:0"

[limits]
header_read_timeout_secs = 2
max_body_bytes = 65536
max_connections = 64
shutdown_grace_secs = 5

[services.search]
kind = "api_key"
mcp_url = "https://search.example/mcp"
rotate_after_days = 90

[services.files]
kind = "api_key"
mcp_url = "http://127.0.0.1:9/mcp"
header = "X-API-Key"
"#;

/// The binary under test. `SCOPEGATE_TEST_BIN` points a long run at a frozen copy, so a
/// rebuild during a 10-minute soak does not swap the binary under it.
pub fn bin() -> String {
    std::env::var("SCOPEGATE_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_scopegate").to_owned())
}

/// Waits until a peer's log says `ready` (bounded by `limit`); panics naming `what` if not.
#[allow(dead_code)]
pub fn wait_until_ready(log: &std::path::Path, what: &str, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A data folder made by `scopegate init`, plus a folder for logs outside it.
pub struct Instance {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub pass: String,
}

impl Instance {
    pub fn init() -> Self {
        Self::init_with(CONFIG)
    }

    pub fn init_with(config: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let inst = Instance {
            tmp,
            dir,
            pass: PASS.to_owned(),
        };
        let out = inst.run(
            &[
                "init",
                "--kdf-memory-kib",
                "19456",
                "--kdf-iterations",
                "2",
                "--kdf-parallelism",
                "1",
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(inst.dir.join("scopegate.toml"), config).unwrap();
        inst
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SCOPEGATE_DATA_DIR", &self.dir)
            .env("SCOPEGATE_PASSPHRASE", &self.pass)
            .env("RUST_LOG", "trace");
        c
    }

    /// Runs a command to completion with `stdin` as its input.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `audit list` once `want` holds for it: per-call entries are group-committed a moment
    /// after the answer, so a test reading them right after a call polls (bounded, 10 s).
    #[allow(dead_code)]
    pub fn audit_until(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let audit = self.ok(&["audit", "list"], b"");
            if want(&audit) || std::time::Instant::now() > deadline {
                return audit;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn start(&self) -> Server {
        self.start_with(|_| {})
    }

    pub fn start_with(&self, f: impl FnOnce(&mut Command)) -> Server {
        let n = std::fs::read_dir(self.tmp.path()).unwrap().count();
        let stdout = self.tmp.path().join(format!("serve{n}.out"));
        let stderr = self.tmp.path().join(format!("serve{n}.err"));
        let mut c = self.command();
        c.arg("serve")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        f(&mut c);
        let child = c.spawn().unwrap();
        let mut s = Server {
            child,
            stdout,
            stderr,
            addr: None,
        };
        s.wait_ready();
        s
    }
}

pub struct Server {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub addr: Option<SocketAddr>,
}

impl Server {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if out.contains("scopegate: ready") {
                let line = out
                    .lines()
                    .find(|l| l.contains("listening on http://"))
                    .unwrap();
                self.addr = Some(
                    line.rsplit("http://")
                        .next()
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap(),
                );
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not become ready: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn term(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20))
            .expect("serve did not stop after SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file below `dir`, read whole (for canary greps).
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A small seeded PRNG (xorshift64*), so runs with random kill points are reproducible.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn seed(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One raw HTTP/1.1 exchange, for limit tests that a client library would refuse to send.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A child process that is killed when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve --dev --listen 127.0.0.1:0` with its temporary folder under `tmp`, waits
/// until it is ready, and returns it (killed if the test fails first) with what it printed.
pub fn start_dev(tmp: &Path) -> (KillOnDrop, String) {
    let out_path = tmp.join("dev.out");
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TMPDIR", tmp)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::fs::read_to_string(&out_path).unwrap();
        if out.contains("scopegate: ready") {
            return (child, out);
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
