//! Per-call audit entries, group-committed: calls enqueue, one task commits whatever has
//! gathered in a single durable transaction (one fsync for many calls). Fail closed: when the
//! queue is full or the last commit failed, new calls are refused until a commit succeeds.
//!
//! The committer wakes once per batch, not once per call: after the first entry of a batch it
//! sleeps for `WINDOW` (its receiver unpolled, so enqueuing wakes nobody) and then takes
//! whatever is queued. A crash loses at most the entries of the last `WINDOW` plus one commit,
//! as before (entries are always written after the call is answered).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::store::audit::Event;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const WINDOW: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Event>,
    healthy: Arc<AtomicBool>,
}

impl AuditQueue {
    pub fn start(gateway: Arc<Gateway>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        tokio::spawn(async move {
            let mut backlog = false;
            while let Some(first) = rx.recv().await {
                // Let a batch gather, unless the last one was full (then there is one already).
                if !backlog {
                    tokio::time::sleep(WINDOW).await;
                }
                let mut events = Vec::with_capacity(64);
                events.push(first);
                while events.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) => break,
                    }
                }
                backlog = events.len() == BATCH;
                let g = gateway.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    g.store.write(|t| t.audit_all(events).map(drop))
                })
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
                if !ok {
                    tracing::error!(
                        "per-call audit entries could not be written; refusing calls until they can"
                    );
                }
                h.store(ok, Ordering::SeqCst);
            }
        });
        Self { tx, healthy }
    }

    /// Whether calls may proceed (I7: no audit, no action).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Enqueues an entry; `false` when it cannot be recorded (the caller refuses the call).
    pub fn record(&self, e: Event) -> bool {
        self.healthy() && self.tx.try_send(e).is_ok()
    }
}
