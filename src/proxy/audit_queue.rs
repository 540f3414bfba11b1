//! Per-call audit entries, group-committed: calls enqueue, one task commits whatever has
//! gathered in a single durable transaction (one fsync for many calls). Fail closed: when the
//! queue is full or the last commit failed, new calls are refused until a commit succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::lifecycle::committer::gather;
use crate::store::audit::Event;

const QUEUE: usize = 8192;
const BATCH: usize = 512;

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
            while let Some(first) = rx.recv().await {
                // Gather what arrives within a moment, so a burst shares one commit.
                let events = gather(&mut rx, first, BATCH, Duration::from_millis(2)).await;
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
