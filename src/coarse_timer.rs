//! Second-grained deadlines for the listener threads' long timeouts: hyper's header-read
//! timeout (a slow-headers defence) and the upstream response-start timeout (504). Both are
//! seconds long and almost never fire, yet every call armed and disarmed a tokio timer for
//! each (the timer driver's lock, a wheel insert and a removal). Without the two, a call cost
//! 5% less CPU (`bench/ab.sh`, 1 and 16 clients); with them on this list, 2–3% less than on
//! tokio's (16 alternating rounds at 16 clients; hyper still boxes one per request).
//!
//! Here a deadline is a slot in its thread's own list: no lock, no wheel. The listener's
//! once-a-second tick wakes the deadlines that have passed (`expire`), so one fires up to a
//! second late, which timeouts of seconds can afford; a deadline polled for another reason
//! after its time is over at once. On a thread without a list (tests, the main runtime),
//! tokio's timer serves instead, exactly.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A deadline's place on the list; free (and on the free list) when it has no waker.
struct Slot {
    deadline: Instant,
    waker: Option<Waker>,
    /// Which deadline holds the slot: a freed slot taken again gets a new number, so a stale
    /// holder never frees or overwrites its successor.
    generation: u64,
}

struct List {
    /// Unique in the process: a deadline moved to another thread sees a different list.
    id: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    generations: u64,
}

thread_local! {
    static LIST: RefCell<Option<List>> = const { RefCell::new(None) };
}

/// Gives this thread a list of deadlines. Its owner must call `expire` every second or so:
/// a listed deadline is only woken by it.
pub fn install() {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    LIST.with(|l| {
        *l.borrow_mut() = Some(List {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            free: Vec::new(),
            generations: 0,
        });
    });
}

/// Wakes this thread's deadlines that are due by `now`, and frees their slots (a deadline
/// polled after its time is ready without looking at its slot).
pub fn expire(now: Instant) {
    let due: Vec<Waker> = LIST.with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else {
            return Vec::new();
        };
        let Some(list) = l.as_mut() else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (i, s) in list.slots.iter_mut().enumerate() {
            if s.deadline <= now
                && let Some(w) = s.waker.take()
            {
                due.push(w);
                list.free.push(i);
            }
        }
        due
    });
    // Woken outside the borrow: a waker may run code that lists a deadline.
    for w in due {
        w.wake();
    }
}

/// Deadlines listed on this thread.
#[cfg(test)]
fn listed() -> usize {
    LIST.with(|l| {
        l.borrow()
            .as_ref()
            .map_or(0, |l| l.slots.iter().filter(|s| s.waker.is_some()).count())
    })
}

enum State {
    /// Not polled while pending yet.
    New,
    Listed {
        list: u64,
        index: usize,
        generation: u64,
    },
    /// No list on the thread that polled it: tokio's timer.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

/// A future ready at `at` (up to a second after it, on a listener thread).
pub struct Deadline {
    at: Instant,
    state: State,
}

impl Deadline {
    pub fn at(at: Instant) -> Self {
        Self {
            at,
            state: State::New,
        }
    }

    pub fn after(d: Duration) -> Self {
        Self::at(Instant::now() + d)
    }

    pub fn reset(&mut self, at: Instant) {
        self.release();
        self.at = at;
    }

    /// Gives up its slot, if it holds one on this thread's list.
    fn release(&mut self) {
        if let State::Listed {
            list,
            index,
            generation,
        } = self.state
        {
            let _ = LIST.try_with(|l| {
                if let Ok(mut l) = l.try_borrow_mut()
                    && let Some(l) = l.as_mut()
                    && l.id == list
                    && let Some(s) = l.slots.get_mut(index)
                    && s.generation == generation
                    && s.waker.take().is_some()
                {
                    l.free.push(index);
                }
            });
        }
        self.state = State::New;
    }

    /// Lists this deadline (or refreshes its waker) on this thread's list; false when the
    /// thread has none, or it is listed on another thread's.
    fn list(&mut self, waker: &Waker) -> bool {
        LIST.try_with(|l| {
            let Ok(mut l) = l.try_borrow_mut() else {
                return false;
            };
            let Some(l) = l.as_mut() else {
                return false;
            };
            match self.state {
                State::Listed {
                    list,
                    index,
                    generation,
                } => {
                    if list != l.id {
                        return false;
                    }
                    match l.slots.get_mut(index) {
                        Some(s) if s.waker.is_some() && s.generation == generation => {
                            if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                                s.waker = Some(waker.clone());
                            }
                            true
                        }
                        // Expired and freed meanwhile (`expire` ran between two polls).
                        _ => {
                            self.state = State::New;
                            Self::take_slot(l, self, waker)
                        }
                    }
                }
                State::New => Self::take_slot(l, self, waker),
                State::Tokio(_) => false,
            }
        })
        .unwrap_or(false)
    }

    fn take_slot(l: &mut List, d: &mut Deadline, waker: &Waker) -> bool {
        l.generations += 1;
        let slot = Slot {
            deadline: d.at,
            waker: Some(waker.clone()),
            generation: l.generations,
        };
        let index = match l.free.pop() {
            Some(i) => {
                l.slots[i] = slot;
                i
            }
            None => {
                l.slots.push(slot);
                l.slots.len() - 1
            }
        };
        d.state = State::Listed {
            list: l.id,
            index,
            generation: l.generations,
        };
        true
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.release();
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let State::Tokio(sleep) = &mut this.state {
            return sleep.as_mut().poll(cx);
        }
        if Instant::now() >= this.at {
            this.release();
            return Poll::Ready(());
        }
        if this.list(cx.waker()) {
            return Poll::Pending;
        }
        // No list here (or the deadline moved threads): tokio's timer from now on.
        this.release();
        let mut sleep = Box::pin(tokio::time::sleep_until(this.at.into()));
        let poll = sleep.as_mut().poll(cx);
        this.state = State::Tokio(sleep);
        poll
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer on `Deadline`s (the server's header-read timeout).
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::after(d))
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(at))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, at: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(d) => d.get_mut().reset(at),
            None => *sleep = self.sleep_until(at),
        }
    }
}

/// `f`, or `Err(())` once `limit` has passed (on a listener thread, up to a second later).
pub async fn timeout<F: Future>(limit: Duration, f: F) -> Result<F::Output, ()> {
    let mut f = std::pin::pin!(f);
    let mut deadline = Deadline::after(limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(&mut deadline).poll(cx).map(Err)
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(d: &mut Deadline, w: &Waker) -> Poll<()> {
        Pin::new(d).poll(&mut Context::from_waker(w))
    }

    #[test]
    fn a_listed_deadline_is_woken_by_expire_once_due_and_its_slot_reused() {
        std::thread::spawn(|| {
            install();
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let w = Waker::from(count.clone());
            let now = Instant::now();
            let mut d = Deadline::at(now + Duration::from_secs(5));
            assert!(poll(&mut d, &w).is_pending());
            assert_eq!(listed(), 1);
            // Not due yet: nothing woken.
            expire(now + Duration::from_secs(4));
            assert_eq!(count.0.load(Ordering::SeqCst), 0);
            expire(now + Duration::from_secs(5));
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(listed(), 0);
            // Its slot goes to the next deadline; the first one's drop must not free it.
            let mut e = Deadline::at(now + Duration::from_secs(60));
            assert!(poll(&mut e, &w).is_pending());
            drop(d);
            assert_eq!(listed(), 1);
            drop(e);
            assert_eq!(listed(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_passed_deadline_is_ready_at_once_and_a_dropped_one_frees_its_slot() {
        std::thread::spawn(|| {
            install();
            let w = Waker::noop();
            let mut past = Deadline::at(Instant::now());
            assert!(poll(&mut past, w).is_ready());
            assert_eq!(listed(), 0);
            let mut d = Deadline::after(Duration::from_secs(30));
            assert!(poll(&mut d, w).is_pending());
            assert!(poll(&mut d, w).is_pending());
            assert_eq!(listed(), 1, "polled twice, listed once");
            d.reset(Instant::now() - Duration::from_millis(1));
            assert_eq!(listed(), 0);
            assert!(poll(&mut d, w).is_ready());
            let mut d = Deadline::after(Duration::from_secs(30));
            assert!(poll(&mut d, w).is_pending());
            drop(d);
            assert_eq!(listed(), 0);
        })
        .join()
        .unwrap();
    }

    /// Without a list (any thread but a listener's), tokio's timer keeps time exactly.
    #[tokio::test]
    async fn without_a_list_tokio_keeps_time() {
        let t0 = Instant::now();
        assert_eq!(
            timeout(Duration::from_millis(50), std::future::pending::<()>()).await,
            Err(())
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        assert_eq!(listed(), 0);
    }
}
