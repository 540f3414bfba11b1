//! Vault benchmark: prints numbers, asserts nothing about speed.
//!
//!   cargo bench --bench vault
//!   SCOPEGATE_BENCH_RECORDS=10000,1000000 SCOPEGATE_BENCH_DIR=/var/tmp cargo bench --bench vault
//!
//! Reports seal+open of a 2 KB token, `Vault::get` latency (p50/p99) at each record count,
//! file sizes, resident memory, and unlock time with the default Argon2id parameters.

use std::time::{Duration, Instant};

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use scopegate::secret::Passphrase;
use scopegate::vault::{KdfParams, Vault, seal};

fn main() {
    let counts: Vec<usize> = std::env::var("SCOPEGATE_BENCH_RECORDS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = std::env::var_os("SCOPEGATE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).expect("temp dir");
    let token = vec![0x5au8; 2048];

    // seal + open of one 2 KB token, in memory.
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let loc = seal::Location {
        table: "secrets",
        record: "secret/bench",
        field: "access_token",
    };
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let s = seal::seal(&cipher, &loc, &token);
        let p = seal::open(&cipher, &loc, &s).expect("opens");
        std::hint::black_box(p);
    }
    println!(
        "seal+open 2 KB token: {} ns per pair ({n} pairs)",
        t.elapsed().as_nanos() / n as u128
    );

    for &count in &counts {
        let path = tmp.path().join(format!("secrets-{count}.redb"));
        let v = Vault::create(
            &path,
            &Passphrase::new(b"benchmark passphrase".to_vec()),
            KdfParams::FLOOR,
        )
        .expect("create");
        let names: Vec<String> = (0..count).map(|i| format!("secret/{i:08}")).collect();
        let t = Instant::now();
        for chunk in names.chunks(10_000) {
            let items: Vec<(&str, &str, &[u8])> = chunk
                .iter()
                .map(|n| (n.as_str(), "access_token", &token[..]))
                .collect();
            v.put_many(&items).expect("put");
        }
        let fill = t.elapsed();
        let samples = 20_000.min(count * 2);
        let mut lat = Vec::with_capacity(samples);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..samples {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let name = &names[(x % count as u64) as usize];
            let t = Instant::now();
            let got = v.get(name, "access_token").expect("get").expect("present");
            lat.push(t.elapsed());
            std::hint::black_box(got);
        }
        lat.sort();
        let pct =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "vault get at {count} records (2 KB each): p50 {:.1} µs, p99 {:.1} µs; fill {:.1} s; file {:.1} MiB ({:.0} B/record); RSS {} MiB",
            pct(0.50),
            pct(0.99),
            fill.as_secs_f64(),
            size as f64 / (1024.0 * 1024.0),
            size as f64 / count as f64,
            rss_mib()
        );
        drop(v);
        let _ = std::fs::remove_file(&path);
    }

    // Unlock with the default parameters (m = 64 MiB, t = 3, p = 4).
    let path = tmp.path().join("default-kdf.redb");
    let pass = Passphrase::new(b"benchmark passphrase".to_vec());
    drop(Vault::create(&path, &pass, KdfParams::DEFAULT).expect("create"));
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            drop(Vault::unlock(&path, &pass).expect("unlock"));
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "unlock with default Argon2id (m=64 MiB, t=3, p=4): median {:.0} ms (5 runs)",
        times[2].as_secs_f64() * 1e3
    );
    println!("peak RSS: {} MiB", peak_rss_mib());
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
fn rss_mib() -> u64 {
    status_field("VmRSS:") / 1024
}
fn peak_rss_mib() -> u64 {
    status_field("VmHWM:") / 1024
}
