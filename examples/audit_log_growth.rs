//! How the audit log grows under per-call group commits: COMMITS commits of PER call-like
//! entries each, through `Store::write`, printing every 250 commits the last commit's time,
//! the slowest since the last line and the store file's size.
//! usage: audit_log_growth [PER] [COMMITS] [rows]
//! With `rows`, every entry is appended on its own (`Txn::audit`), as one row each: the layout
//! before segments, for comparison.

use std::time::Instant;

use scopegate::store::Store;
use scopegate::store::audit::{Event, HeadKey};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let per: usize = args.next().map_or(Ok(400), |s| s.parse())?;
    let commits: usize = args.next().map_or(Ok(3000), |s| s.parse())?;
    let rows = args.next().as_deref() == Some("rows");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scopegate.redb");
    let store = Store::create(&path, "bench", HeadKey::new([1; 32]))?;
    let started = Instant::now();
    let mut slowest = 0f64;
    for i in 0..commits {
        let events: Vec<Event> = (0..per)
            .map(|j| {
                Event::new("agent:wrk", "mcp.call", "bench", "ok")
                    .detail("method", "tools/call")
                    .detail("tool", "echo")
                    .detail("micros", (i * per + j).to_string())
                    .detail("connection", "0b7d2c9e-5c1a-4e43-9f55-0123456789ab")
            })
            .collect();
        let t = Instant::now();
        if rows {
            store.write(|t| events.into_iter().try_for_each(|e| t.audit(e).map(drop)))?;
        } else {
            store.write(|t| t.audit_all(events).map(drop))?;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        slowest = slowest.max(ms);
        if i % 250 == 249 || i + 1 == commits {
            let mib = std::fs::metadata(&path)?.len() >> 20;
            println!(
                "{:>9} entries: commit {ms:.2} ms, slowest {slowest:.2} ms, file {mib} MiB",
                (i + 1) * per
            );
            slowest = 0.0;
        }
    }
    println!("{:.1} s in all", started.elapsed().as_secs_f64());
    Ok(())
}
