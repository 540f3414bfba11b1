//! Group commit for the token lifecycle. A durable redb commit costs 0.2–8 ms here; a storm of
//! refreshes would be bounded by fsyncs if each marker and each result had its own. Callers
//! send a job and wait for its outcome; one task gathers whatever has arrived, seals every
//! job's values in one vault commit, then applies every job in one store commit, and only then
//! answers each caller: each still waits until its own rotation is durable (I16). Records
//! the store no longer points at are retired through the same queue, so a storm's deletions
//! share its vault commits instead of one fsync each; a lone retirement gets a commit of its
//! own. A crash before it leaves orphans, which start-up reconciliation removes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::gateway::{Gateway, SYSTEM};
use crate::secret::SecretBytes;
use crate::store::audit::Event;
use crate::store::{StoreError, Txn};

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const GATHER: Duration = Duration::from_millis(2);

pub type Apply = Box<dyn FnOnce(&mut Txn<'_>) -> Result<(), StoreError> + Send>;

/// One unit of durable work: values to seal (vault first), then a store change that must
/// audit itself. `apply` must fail only on storage errors (a missing connection is not an
/// error: check and skip), since one failure fails its whole batch.
pub struct Job {
    pub seal: Vec<(String, &'static str, SecretBytes)>,
    pub apply: Apply,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// Nothing of the batch was committed; the caller may clean up what it sealed.
    #[error("could not be saved: {0}")]
    Failed(String),
    /// The store commit may or may not have landed: leave it to reconciliation.
    #[error("may or may not have been saved: {0}")]
    Uncertain(String),
}

enum Msg {
    Job(Job, oneshot::Sender<Result<(), CommitError>>),
    /// A vault record nothing points at any more (decided after a completed store commit).
    Retire(String),
}

#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Msg>,
    /// Store commits made (each carrying one batch), for /metrics.
    pub commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Committer {
    pub fn start(gateway: Arc<Gateway>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = gather(&mut rx, first, BATCH, BATCH, GATHER).await;
                let mut jobs = Vec::new();
                let mut retired = Vec::new();
                for m in batch {
                    match m {
                        Msg::Job(j, w) => jobs.push((j, w)),
                        Msg::Retire(r) => retired.push(r),
                    }
                }
                if !jobs.is_empty() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let g = gateway.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let (jobs, waiters): (Vec<Job>, Vec<_>) = jobs.into_iter().unzip();
                    let result = commit(&g, jobs, &retired);
                    (result, waiters)
                })
                .await;
                match outcome {
                    Ok((result, waiters)) => {
                        for w in waiters {
                            let _ = w.send(result.clone());
                        }
                    }
                    // The blocking task panicked: its waiters' senders were dropped with it,
                    // and they see the channel closed.
                    Err(e) => tracing::error!(error = %e, "refresh commit task failed"),
                }
            }
        });
        Self { tx, commits }
    }

    /// Retires a vault record the store no longer points at: removed with the next vault
    /// commit. Best effort; an orphan left by a crash is removed at start-up.
    pub async fn retire(&self, record: String) {
        let _ = self.tx.send(Msg::Retire(record)).await;
    }

    /// Sends `job` and waits until it is durable (or has failed).
    pub async fn commit(&self, job: Job) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job(job, tx))
            .await
            .map_err(|_| CommitError::Failed("the committer has stopped".into()))?;
        rx.await
            .map_err(|_| CommitError::Failed("the commit task failed".into()))?
    }
}

/// `first` and whatever else arrives within `window`, up to `max`: a burst shares one
/// durable commit (the refresh committer and the proxy's audit queue). It sleeps through the
/// window with the receiver unpolled and then drains, so senders wake nobody meanwhile (waiting
/// on each item cost the proxy a cross-thread wake-up per call); with `enough` already queued
/// (a backlog, after a slow commit) it does not wait at all.
pub(crate) async fn gather<T>(
    rx: &mut mpsc::Receiver<T>,
    first: T,
    enough: usize,
    max: usize,
    window: Duration,
) -> Vec<T> {
    if rx.len() + 1 < enough {
        tokio::time::sleep(window).await;
    }
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(i) => batch.push(i),
            Err(_) => break,
        }
    }
    batch
}

fn commit(g: &Gateway, jobs: Vec<Job>, retired: &[String]) -> Result<(), CommitError> {
    let seal: Vec<(&str, &str, &[u8])> = jobs
        .iter()
        .flat_map(|j| {
            j.seal
                .iter()
                .map(|(r, f, v)| (r.as_str(), *f, v.expose_secret()))
        })
        .collect();
    if !seal.is_empty() || !retired.is_empty() {
        g.vault
            .put_and_delete(&seal, retired)
            .map_err(|e| CommitError::Failed(e.to_string()))?;
    }
    let n = jobs.len();
    if n == 0 {
        return Ok(());
    }
    g.store
        .write(|t| {
            for j in jobs {
                (j.apply)(t)?;
            }
            // Markers do not audit one by one; a batch of only markers gets one entry.
            if !t.has_audited() {
                t.audit(
                    Event::new(SYSTEM, "oauth.refresh_started", "store", "ok")
                        .detail("connections", n.to_string()),
                )?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            StoreError::CommitUncertain(m) => CommitError::Uncertain(m),
            e => CommitError::Failed(e.to_string()),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A backlog (what queued during a slow commit) is taken whole at once, past `enough`
    /// and without waiting out the window; a trickle waits for the window's company.
    #[tokio::test]
    async fn a_backlog_is_taken_whole_without_waiting_and_a_trickle_waits_the_window() {
        let (tx, mut rx) = mpsc::channel::<u32>(10_000);
        for i in 0..5000 {
            tx.try_send(i).unwrap();
        }
        let first = rx.recv().await.unwrap();
        let t0 = std::time::Instant::now();
        let batch = gather(&mut rx, first, 1024, 10_000, Duration::from_secs(30)).await;
        assert_eq!(batch.len(), 5000);
        assert!(batch.iter().copied().eq(0..5000), "in order");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Capped at `max`, the rest left for the next commit.
        for i in 0..50 {
            tx.try_send(i).unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(
            gather(&mut rx, first, 10, 20, Duration::ZERO).await.len(),
            20
        );
        assert_eq!(rx.len(), 30);
        while rx.try_recv().is_ok() {}
        // One waiting: the window is waited out for more to share the commit.
        tx.try_send(1).unwrap();
        let first = rx.recv().await.unwrap();
        let t0 = std::time::Instant::now();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            late.try_send(2).unwrap();
        });
        let batch = gather(&mut rx, first, 1024, 10_000, Duration::from_millis(200)).await;
        assert_eq!(batch, vec![1, 2]);
        assert!(t0.elapsed() >= Duration::from_millis(200));
    }
}
