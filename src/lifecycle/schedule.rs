//! When each connection is refreshed: a pure, ordered schedule (no I/O, no clock of its own)
//! and the clock it is driven by, real or fake.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use crate::store::{Connection, ConnectionKind, ConnectionStatus};

/// Refresh at this fraction of the token's lifetime (from receipt time plus `expires_in`).
const DUE_FRACTION: f64 = 0.8;
/// Jitter: up to this fraction of the lifetime either way, so tokens issued together (a
/// restart, a migration) do not come due together.
const JITTER_FRACTION: f64 = 0.05;
/// Never later than this before expiry, whatever the lifetime.
const LATEST_BEFORE_EXPIRY: Duration = Duration::seconds(5);

/// When `c` should next be refreshed, or `None` when it is not the scheduler's to refresh
/// (API keys, tokens without an expiry, connections that are not active). `jitter` is a
/// uniform random number in [0, 1).
pub fn due_at(c: &Connection, jitter: f64) -> Option<OffsetDateTime> {
    if c.kind != ConnectionKind::Oauth || c.status != ConnectionStatus::Active {
        return None;
    }
    let expires = c.access_expires?;
    if let Some(retry) = c.refresh.retry_at {
        return Some(retry);
    }
    let issued = c.last_refresh.or(c.secret_set_at)?;
    let lifetime = expires - issued;
    if lifetime <= Duration::ZERO {
        return Some(issued);
    }
    let offset = DUE_FRACTION + JITTER_FRACTION * (2.0 * jitter - 1.0);
    let due = issued + lifetime * offset;
    // Never before half the lifetime: a token of a few seconds must not be refreshed in a
    // loop the moment it arrives.
    Some(
        due.min(expires - LATEST_BEFORE_EXPIRY)
            .max(issued + lifetime / 2),
    )
}

/// Connections ordered by due time. Memory is one entry per scheduled connection.
#[derive(Default)]
pub struct Schedule {
    by_due: BTreeSet<(i128, Arc<str>)>,
    due_of: HashMap<Arc<str>, i128>,
}

fn key(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos()
}

impl Schedule {
    pub fn upsert(&mut self, id: &str, due: OffsetDateTime) {
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        self.by_due.insert((key(due), id.clone()));
        self.due_of.insert(id, key(due));
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(k) = self.due_of.remove(id) {
            self.by_due.remove(&(k, Arc::from(id)));
        }
    }

    pub fn len(&self) -> usize {
        self.due_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due_of.is_empty()
    }

    pub fn next_due(&self) -> Option<OffsetDateTime> {
        self.by_due
            .first()
            .and_then(|(k, _)| OffsetDateTime::from_unix_timestamp_nanos(*k).ok())
    }

    /// Takes up to `limit` connections due at `now`, earliest first.
    pub fn pop_due(&mut self, now: OffsetDateTime, limit: usize) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.by_due.first() {
                Some((k, _)) if *k <= key(now) => {}
                _ => break,
            }
            if let Some((_, id)) = self.by_due.pop_first() {
                self.due_of.remove(&id);
                out.push(id);
            }
        }
        out
    }

    /// Start-up spreading: whatever is already due is moved to a random point in the next
    /// `window`, so a restart after downtime does not fire every overdue refresh at once.
    pub fn spread_overdue(
        &mut self,
        now: OffsetDateTime,
        window: Duration,
        mut random: impl FnMut() -> f64,
    ) -> usize {
        let overdue = self.pop_due(now, usize::MAX);
        let n = overdue.len();
        for id in overdue {
            self.upsert(&id, now + window * random());
        }
        n
    }
}

/// The scheduler's notion of time: the real one, or a fake that tests move by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// Resolves at `t` or later (or earlier, spuriously: callers re-check).
    fn sleep_until(
        &self,
        t: OffsetDateTime,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep_until(
        &self,
        t: OffsetDateTime,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let wait = (t - OffsetDateTime::now_utc()).clamp(Duration::ZERO, Duration::hours(1));
        Box::pin(tokio::time::sleep(wait.unsigned_abs()))
    }
}

/// A clock that only moves when `advance` is called.
pub struct FakeClock {
    now: Mutex<OffsetDateTime>,
    moved: tokio::sync::Notify,
}

impl FakeClock {
    pub fn new(start: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(start),
            moved: tokio::sync::Notify::new(),
        })
    }

    pub fn advance(&self, d: Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
            *now += d;
        }
        self.moved.notify_waiters();
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep_until(
        &self,
        t: OffsetDateTime,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let moved = self.moved.notified();
                if self.now() >= t {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::RefreshState;

    pub(crate) fn oauth(issued: OffsetDateTime, lifetime_s: i64) -> Connection {
        Connection {
            id: "c".into(),
            user_id: "u".into(),
            service: "s".into(),
            kind: ConnectionKind::Oauth,
            status: ConnectionStatus::Active,
            status_reason: None,
            secret_record: Some("secret/x".into()),
            secret_fingerprint: None,
            scopes: Vec::new(),
            created: issued,
            updated: issued,
            secret_set_at: Some(issued),
            access_expires: Some(issued + Duration::seconds(lifetime_s)),
            issuer: None,
            strikes: 0,
            last_refresh: None,
            refresh: RefreshState::default(),
            subject: None,
            dpop_jkt: None,
        }
    }

    #[test]
    fn due_at_eighty_percent_of_lifetime_within_the_jitter() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let c = oauth(t0, 3600);
        let lo = due_at(&c, 0.0).unwrap() - t0;
        let mid = due_at(&c, 0.5).unwrap() - t0;
        let hi = due_at(&c, 0.999_999).unwrap() - t0;
        assert_eq!(mid, Duration::seconds(2880), "80% of an hour");
        assert_eq!(lo, Duration::seconds(2700), "minus 5% of the lifetime");
        assert!(hi > Duration::seconds(3059) && hi <= Duration::seconds(3060));
        // After a refresh, the lifetime counts from the refresh.
        let mut r = c.clone();
        r.last_refresh = Some(t0 + Duration::seconds(3000));
        r.access_expires = Some(t0 + Duration::seconds(6600));
        assert_eq!(
            due_at(&r, 0.5).unwrap() - t0,
            Duration::seconds(3000 + 2880)
        );
        // Short tokens: never later than 5 s before expiry, never before half the lifetime.
        let short = oauth(t0, 20);
        assert!(due_at(&short, 0.999).unwrap() <= t0 + Duration::seconds(15));
        let tiny = oauth(t0, 4);
        assert_eq!(due_at(&tiny, 0.5).unwrap(), t0 + Duration::seconds(2));
        // Backoff wins; API keys, inactive connections and tokens without expiry are not due.
        let mut backing_off = c.clone();
        backing_off.refresh.retry_at = Some(t0 + Duration::seconds(10));
        assert_eq!(due_at(&backing_off, 0.5), Some(t0 + Duration::seconds(10)));
        let mut key = c.clone();
        key.kind = ConnectionKind::ApiKey;
        let mut reauth = c.clone();
        reauth.status = ConnectionStatus::NeedsReauth;
        let mut forever = c.clone();
        forever.access_expires = None;
        for c in [key, reauth, forever] {
            assert_eq!(due_at(&c, 0.5), None);
        }
    }

    #[test]
    fn pops_in_due_order_up_to_the_limit_and_upsert_moves_entries() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let mut s = Schedule::default();
        for (i, secs) in [30, 10, 20, 40].iter().enumerate() {
            s.upsert(&format!("c{i}"), t0 + Duration::seconds(*secs));
        }
        s.upsert("c3", t0 + Duration::seconds(5)); // rescheduled earlier
        assert_eq!(s.len(), 4);
        assert_eq!(s.next_due(), Some(t0 + Duration::seconds(5)));
        let due: Vec<String> = s
            .pop_due(t0 + Duration::seconds(25), 2)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(due, ["c3", "c1"]);
        let rest: Vec<String> = s
            .pop_due(t0 + Duration::seconds(25), 10)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(rest, ["c2"], "c0 (30 s) is not due yet");
        s.remove("c0");
        assert!(s.is_empty());
    }

    #[test]
    fn overdue_entries_are_spread_over_the_window() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let mut s = Schedule::default();
        for i in 0..500 {
            s.upsert(&format!("c{i}"), t0 - Duration::seconds(i));
        }
        s.upsert("later", t0 + Duration::hours(1));
        let mut x = 0.0;
        let moved = s.spread_overdue(t0, Duration::seconds(50), || {
            x = (x + 0.618_034) % 1.0;
            x
        });
        assert_eq!(moved, 500);
        // Per second of the window, about 10 of them: never all at once.
        let mut per_second = [0usize; 50];
        while let Some(t) = s.next_due() {
            if t > t0 + Duration::seconds(50) {
                break;
            }
            per_second[((t - t0).whole_seconds()) as usize] += 1;
            s.pop_due(t, 1);
        }
        assert_eq!(per_second.iter().sum::<usize>(), 500);
        assert!(per_second.iter().all(|n| *n <= 20), "{per_second:?}");
        assert_eq!(s.len(), 1, "the one not yet due stays put");
    }

    #[tokio::test]
    async fn the_fake_clock_wakes_sleepers_only_when_moved_past_their_time() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let clock = FakeClock::new(t0);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move { c2.sleep_until(t0 + Duration::seconds(60)).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::seconds(30));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::seconds(30));
        tokio::time::timeout(std::time::Duration::from_secs(2), sleeper)
            .await
            .unwrap()
            .unwrap();
    }
}
