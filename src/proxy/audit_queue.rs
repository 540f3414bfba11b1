//! Per-call audit entries, group-committed: calls enqueue, one task commits whatever has
//! gathered in a single durable transaction (one fsync for many calls). Fail closed: when the
//! queue is full or the last commit failed, new calls are refused until a commit succeeds.
//!
//! The committer wakes once per batch, not once per call (`gather` sleeps through `WINDOW`,
//! then takes whatever is queued). A crash loses the entries not yet committed (entries are
//! always written after the call is answered): normally the last `WINDOW` plus one commit,
//! more if the disk has stalled (at most `QUEUE`); a clean stop loses none (`flush`).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Throttle;
use crate::gateway::Gateway;
use crate::gateway::agents::Principal;
use crate::lifecycle::committer::gather;
use crate::store::Connection;
use crate::store::audit::{Event, Record, escape_cow, write_body};

/// A proxied call as the request path records it: shared handles and words, so answering the
/// call copies next to nothing; the committer writes its entry straight from it (`Record`).
/// Never arguments: they can carry secrets.
pub struct CallRecord {
    pub principal: Arc<Principal>,
    pub service: Arc<str>,
    /// The JSON-RPC method (`None`: a GET stream or DELETE) and the tool called.
    pub method: Option<String>,
    pub tool: Option<String>,
    pub outcome: Cow<'static, str>,
    pub micros: u64,
    /// The connection whose credential went upstream: the scope audit attributes exercised
    /// scopes by it.
    pub connection: Option<Arc<Connection>>,
}

/// The entry a call's record makes, written straight from the record (no `Event`, no map):
/// byte for byte what `into_event` gives (`a_call_record_is_written_as_its_event_would_be`).
impl Record for CallRecord {
    fn write_body(&self, out: &mut Vec<u8>, seq: u64, time: &str) {
        let actor = format!("agent:{}", self.principal.agent.name);
        let micros = self.micros.to_string();
        let method = self.method.as_deref().unwrap_or("(stream)");
        // In key order, as the event's map would hold them.
        let details = [
            (
                "connection",
                self.connection.as_ref().map(|c| escape_cow(&c.id)),
            ),
            ("method", Some(escape_cow(method))),
            ("micros", Some(escape_cow(&micros))),
            ("tool", self.tool.as_deref().map(escape_cow)),
        ];
        write_body(
            out,
            seq,
            time,
            [
                escape_cow(&actor),
                Cow::Borrowed("mcp.call"),
                escape_cow(&self.service),
                escape_cow(&self.outcome),
            ],
            details
                .iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))),
        );
    }
}

impl CallRecord {
    /// The call as a general audit event: what the entry says (`Record` writes the same).
    pub fn into_event(self) -> Event {
        let mut e = Event::new(
            &format!("agent:{}", self.principal.agent.name),
            "mcp.call",
            &self.service,
            &self.outcome,
        )
        .detail("method", self.method.as_deref().unwrap_or("(stream)"))
        .detail("micros", self.micros.to_string());
        if let Some(t) = self.tool {
            e = e.detail("tool", t);
        }
        if let Some(c) = self.connection {
            e = e.detail("connection", c.id.clone());
        }
        e
    }
}

/// Calls answered whose entries wait for a commit: normally one window's worth; this bound is
/// for a disk that stalls. Commits of a quarter second were seen on this machine under load
/// (`slow audit commit`); at 16 000 calls a second 8 192 places lasted half a second and were
/// overrun twice in a benchmark session, refusing calls. 32 768 hold two seconds. A record is
/// about 150 bytes with the usual names (5 MB for a full queue); method and tool are cut to
/// the entry's field cap, so at most about 4 KB. Past the bound, calls are refused until the
/// store catches up (I7).
const QUEUE: usize = 32768;
/// A window's worth at high load: with this many queued, the committer does not wait out the
/// window. It takes everything queued, though: after a slow commit (a disk stall of a second
/// was seen in a benchmark), taking 1 024 at a time drained 1 024 calls a commit while tens of
/// thousands a second arrived, and the queue filled, refusing calls; one commit of the whole
/// backlog costs about what a small one does.
const ENOUGH: usize = 1024;
/// A commit's fixed cost (dirty pages, checksums, one fdatasync) is shared by every call in the
/// window: measured per call on the committer, 22–26 µs at 5 ms and 11 µs at 20 ms with one
/// client, 11–12 µs and 8–9 µs with 16 (`bench/proxy.sh`). The price is a crash losing up to
/// 20 ms of answered calls' entries rather than 5.
const WINDOW: Duration = Duration::from_millis(20);
/// A commit slower than this is logged: calls keep coming meanwhile.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<CallRecord>,
    healthy: Arc<AtomicBool>,
    /// Entries accepted, and entries whose commit has been attempted (for `flush`).
    queued: Arc<AtomicU64>,
    settled: Arc<AtomicU64>,
    /// The "queue full" warning, at most once a second.
    full_log: Arc<Throttle>,
}

impl AuditQueue {
    pub fn start(gateway: Arc<Gateway>) -> Self {
        let (tx, mut rx) = mpsc::channel::<CallRecord>(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let (queued, settled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let done = settled.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let events = gather(&mut rx, first, ENOUGH, QUEUE, WINDOW).await;
                let n = events.len() as u64;
                let g = gateway.clone();
                let began = std::time::Instant::now();
                let ok = tokio::task::spawn_blocking(move || {
                    g.store.write(|t| t.audit_all(events).map(drop))
                })
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
                let took = began.elapsed();
                if took > SLOW_COMMIT {
                    // Calls keep coming meanwhile: a store this slow fills the queue.
                    tracing::warn!(
                        entries = n,
                        ms = took.as_millis() as u64,
                        "slow audit commit"
                    );
                }
                if !ok {
                    tracing::error!(
                        "per-call audit entries could not be written; refusing calls until they can"
                    );
                }
                h.store(ok, Ordering::SeqCst);
                done.fetch_add(n, Ordering::SeqCst);
            }
        });
        Self {
            tx,
            healthy,
            queued,
            settled,
            full_log: Arc::new(Throttle::new()),
        }
    }

    /// Waits (up to `limit`) until every entry accepted so far has been committed or has
    /// failed to be: at shutdown, after the listeners drained, so calls answered during the
    /// drain are in the log before `serve.stop`.
    pub async fn flush(&self, limit: Duration) -> bool {
        let target = self.queued.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        while self.settled.load(Ordering::SeqCst) < target {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Whether calls may proceed (I7: no audit, no action).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Enqueues a call's record; `false` when it cannot be recorded (the caller refuses the
    /// call).
    pub fn record(&self, call: CallRecord) -> bool {
        if !self.healthy() {
            return false;
        }
        match self.tx.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The committer is behind by a whole queue (a stalled disk): say so, at most
                // once a second, since every call meanwhile is refused.
                if let Some(suppressed) = self.full_log.admit() {
                    tracing::warn!(
                        queued = QUEUE,
                        suppressed,
                        "the audit queue is full (the store is not keeping up); refusing calls"
                    );
                }
                return false;
            }
            // The committer has stopped (shutting down): nothing more can be recorded.
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use time::OffsetDateTime;

    use super::*;
    use crate::store::ConnectionStatus;
    use crate::store::audit::{Entry, append_entry, escape_untrusted, format_time};

    fn record(name: &str, tool: Option<&str>, method: Option<&str>, conn: bool) -> CallRecord {
        let mut principal = crate::gateway::agents::fixtures::principal();
        principal.agent.name = name.into();
        CallRecord {
            principal: Arc::new(principal),
            service: "files\u{1b}[2J".into(),
            method: method.map(Into::into),
            tool: tool.map(Into::into),
            outcome: "upstream_503".into(),
            micros: 1234567,
            connection: conn.then(|| {
                Arc::new(crate::store::fixtures::connection(
                    "c-1\u{7}",
                    "u",
                    ConnectionStatus::Active,
                    None,
                ))
            }),
        }
    }

    /// The committer writes a call's entry straight from its record: the bytes (and so the
    /// hash) are the ones the general path gives for the same call as an `Event`, and the ones
    /// `serde_json` gives for the entry. Tool and method names come from the agent, so they
    /// carry quotes, backslashes, control and bidi characters, and overlong text.
    #[test]
    fn a_call_record_is_written_as_its_event_would_be() {
        let long = "x".repeat(700);
        let cases = [
            ("bot", Some("echo"), Some("tools/call"), true),
            ("bot", None, None, false),
            (
                "b\"o\\t",
                Some("a\"b\\c\n\u{202e}\u{0}é"),
                Some("tools/\u{85}call"),
                true,
            ),
            ("bot", Some(long.as_str()), Some(long.as_str()), false),
        ];
        let time = format_time(OffsetDateTime::UNIX_EPOCH + time::Duration::nanoseconds(5));
        let prev = "cd".repeat(32);
        for (name, tool, method, conn) in cases {
            let r = record(name, tool, method, conn);
            let (mut direct, mut general) = (Vec::new(), Vec::new());
            let h1 = append_entry(&mut direct, &r, 7, &time, &prev);
            let h2 = append_entry(&mut general, &r.into_event(), 7, &time, &prev);
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&general)
            );
            assert_eq!(h1, h2);
            let entry: Entry = serde_json::from_slice(&direct).unwrap();
            assert_eq!(serde_json::to_vec(&entry).unwrap(), direct);
            assert_eq!(entry.compute_hash(), h1);
            // Each field from outside, escaped (and capped) as the log requires.
            assert_eq!(entry.actor, escape_untrusted(&format!("agent:{name}")));
            assert_eq!(entry.target, "files\\u{1b}[2J");
            let detail = |k: &str| entry.details.get(k).cloned();
            assert_eq!(detail("tool"), tool.map(escape_untrusted));
            assert_eq!(
                detail("method"),
                Some(escape_untrusted(method.unwrap_or("(stream)")))
            );
            assert_eq!(detail("connection"), conn.then(|| "c-1\\u{7}".to_owned()));
            assert_eq!(detail("micros").as_deref(), Some("1234567"));
            assert!(entry.details.values().all(|v| v.chars().count() <= 513));
            assert_eq!(entry.action, "mcp.call");
        }
    }
}
