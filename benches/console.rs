//! Console frame time with a large gateway: 100 000 audit entries and 10 000 connections.
//! Prints per-view render times (the pure `view::render` into an 80x24 and a 200x60 buffer)
//! and the cost of the updates that touch the big lists (filter, live-tail append).
//!
//!     cargo bench --bench console
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use scopegate::console::model::{Loaded, Model, Msg, Tab, update};
use scopegate::console::view;
use scopegate::gateway::ConnectionView;
use scopegate::store::audit::Entry;
use scopegate::store::{ConnectionKind, ConnectionStatus};
use time::OffsetDateTime;

const AUDIT: u64 = 100_000;
const CONNECTIONS: usize = 10_000;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
}

fn model() -> Model {
    let mut m = Model::new(now(), true);
    let conns = (0..CONNECTIONS)
        .map(|i| ConnectionView {
            id: format!("0198c0de-{i:08}"),
            user: format!("user{}", i % 997),
            service: format!("svc{}", i % 13),
            kind: ConnectionKind::Oauth,
            status: if i.is_multiple_of(50) {
                ConnectionStatus::NeedsReauth
            } else {
                ConnectionStatus::Active
            },
            status_reason: None,
            scopes: vec!["files.read".into(), "files.write".into()],
            secret_fingerprint: Some("fp".into()),
            created: now(),
            updated: now(),
            secret_set_at: None,
            rotation_due: false,
            access_expires: Some(now() + time::Duration::seconds(i as i64)),
            last_refresh: Some(now()),
            strikes: (i % 3) as u32,
            refresh: Default::default(),
            dpop_jkt: None,
        })
        .collect();
    update(&mut m, Msg::Loaded(Loaded::Connections(conns)));
    update(&mut m, Msg::Loaded(Loaded::AuditCount(0)));
    let entries: Vec<Entry> = (1..=AUDIT).map(entry).collect();
    update(&mut m, Msg::Loaded(Loaded::Audit(entries)));
    m
}

fn entry(seq: u64) -> Entry {
    let mut details = BTreeMap::new();
    details.insert("tool".to_owned(), "read_file".to_owned());
    Entry {
        seq,
        time: now(),
        actor: format!("agent:bot{}", seq % 17),
        action: "mcp.call".into(),
        target: format!("svc{}", seq % 13),
        outcome: if seq.is_multiple_of(100) {
            "denied"
        } else {
            "ok"
        }
        .into(),
        details,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

fn frame_time(m: &Model, w: u16, h: u16, frames: u32) -> f64 {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    // Warm up once.
    term.draw(|f| view::render(m, f)).unwrap();
    let t = Instant::now();
    for _ in 0..frames {
        term.draw(|f| view::render(m, f)).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e3 / f64::from(frames)
}

fn main() {
    let t = Instant::now();
    let mut m = model();
    println!(
        "console bench: {AUDIT} audit entries, {CONNECTIONS} connections (built in {:.0} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    for tab in Tab::ALL {
        while m.tab != tab {
            update(&mut m, Msg::NextTab);
        }
        // The cursor in the middle of the list, as when scrolling.
        update(&mut m, Msg::Top);
        for _ in 0..500 {
            update(&mut m, Msg::PageDown);
        }
        let small = frame_time(&m, 80, 24, 200);
        let big = frame_time(&m, 200, 60, 200);
        println!(
            "  {:<12} frame {small:>7.3} ms at 80x24, {big:>7.3} ms at 200x60",
            tab.title()
        );
    }
    // Updates that walk the big lists.
    while m.tab != Tab::Audit {
        update(&mut m, Msg::NextTab);
    }
    let t = Instant::now();
    update(&mut m, Msg::StartFilter);
    for c in "actor:bot3 outcome:denied".chars() {
        update(&mut m, Msg::InputChar(c));
    }
    update(&mut m, Msg::InputSubmit);
    println!(
        "  audit filter over {AUDIT} entries: {:.2} ms ({} match)",
        t.elapsed().as_secs_f64() * 1e3,
        m.audit_view.len()
    );
    let filtered = frame_time(&m, 80, 24, 200);
    println!("  audit (filtered) frame {filtered:.3} ms at 80x24");
    update(&mut m, Msg::ClearFilter);
    let t = Instant::now();
    let batch: Vec<Entry> = (AUDIT + 1..=AUDIT + 1000).map(entry).collect();
    update(&mut m, Msg::Loaded(Loaded::Audit(batch)));
    println!(
        "  live tail: 1000 new entries at the 100 000 cap: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}
