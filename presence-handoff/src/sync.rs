//! The one door through which the hand-offs reach for locks and wakeups, so that loom can model
//! the very code that ships.
//!
//! In a normal build [`Mutex`] is `parking_lot`'s. Under `RUSTFLAGS="--cfg loom"` it is a thin
//! wrapper around loom's, with the same (non-poisoning) API. [`Wakeup`] is written once, over
//! that `Mutex` and `std::task::Waker`, so the models in `tests/loom.rs` check the wakeup a
//! session task awaits, not a stand-in for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use self::loom_shim::{Mutex, MutexGuard};

#[cfg(loom)]
mod loom_shim {
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    /// `parking_lot::Mutex`'s API over loom's mutex.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }
}

/// A one-permit wakeup for one waiting task: `tokio::sync::Notify`'s `notify_one` and
/// `notified` without tokio, in 32 bytes.
///
/// [`notify`](Self::notify) with no task waiting leaves a permit (at most one: notifies
/// coalesce). [`notified`](Self::notified) is a future that completes, consuming the permit,
/// when one is or becomes available. The future holds no state of its own, so dropping it
/// unfinished (a `tokio::select!` whose other branch won) loses nothing: the next one sees any
/// permit given meanwhile.
///
/// One task waits at a time (a session's task on its outbox): a second task polling at the
/// same time would replace the first one's waker, and the first might not be woken.
#[derive(Default)]
pub struct Wakeup {
    state: Mutex<WakeState>,
}

#[derive(Default)]
struct WakeState {
    permit: bool,
    /// The waiting task; the next notify takes it and wakes it.
    waker: Option<Waker>,
}

impl Wakeup {
    /// Gives the permit and wakes the waiting task, if any.
    pub fn notify(&self) {
        let waker = {
            let mut s = self.state.lock();
            s.permit = true;
            s.waker.take()
        };
        // Outside the lock: the task may run at once on another thread and poll.
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits for the permit (see the type's docs).
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }

    /// Takes the permit if there is one, without waiting.
    pub fn try_take(&self) -> bool {
        std::mem::take(&mut self.state.lock().permit)
    }
}

/// The future of [`Wakeup::notified`].
#[must_use = "futures do nothing unless polled"]
pub struct Notified<'a>(&'a Wakeup);

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.state.lock();
        if std::mem::take(&mut s.permit) {
            // A waker left by an earlier, dropped wait would keep its task alive for nothing.
            let stale = s.waker.take();
            drop(s);
            drop(stale);
            return Poll::Ready(());
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let old = s.waker.replace(cx.waker().clone());
            drop(s);
            drop(old);
        }
        Poll::Pending
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    fn poll(f: &mut Notified<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// Unparks a thread.
    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Polls `f` on this thread until it completes, parking in between.
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn a_notify_with_no_waiter_is_remembered_once() {
        let w = Wakeup::default();
        w.notify();
        w.notify();
        let (count, waker) = counting();
        assert_eq!(poll(&mut w.notified(), &waker), Poll::Ready(()));
        assert_eq!(
            poll(&mut w.notified(), &waker),
            Poll::Pending,
            "notifies coalesce into one permit"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(!w.try_take());
    }

    #[test]
    fn a_waiting_task_is_woken_once_and_takes_the_permit() {
        let w = Wakeup::default();
        let (count, waker) = counting();
        let mut f = w.notified();
        assert_eq!(poll(&mut f, &waker), Poll::Pending);
        assert_eq!(
            poll(&mut f, &waker),
            Poll::Pending,
            "polled again, still waiting"
        );
        w.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        w.notify();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken once until it waits again"
        );
        assert_eq!(poll(&mut f, &waker), Poll::Ready(()));
        assert!(!w.try_take(), "the wait took the permit");
    }

    #[test]
    fn a_dropped_wait_loses_nothing() {
        let w = Wakeup::default();
        let (count, waker) = counting();
        // A select! whose other branch won: polled once, then dropped.
        assert_eq!(poll(&mut w.notified(), &waker), Poll::Pending);
        w.notify();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the task is woken all the same"
        );
        // The next loop's wait sees the permit.
        assert_eq!(poll(&mut w.notified(), &waker), Poll::Ready(()));
        // Created and dropped without a poll: the permit stays.
        w.notify();
        drop(w.notified());
        assert!(w.try_take());
        assert!(!w.try_take());
    }

    #[test]
    fn the_latest_waker_is_the_one_woken() {
        let w = Wakeup::default();
        let (old, old_waker) = counting();
        let (new, new_waker) = counting();
        let mut f = w.notified();
        assert_eq!(poll(&mut f, &old_waker), Poll::Pending);
        assert_eq!(poll(&mut f, &new_waker), Poll::Pending);
        w.notify();
        assert_eq!(old.0.load(Ordering::SeqCst), 0);
        assert_eq!(new.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ping_pong_between_threads_loses_no_wakeup() {
        let ping = Arc::new(Wakeup::default());
        let pong = Arc::new(Wakeup::default());
        let rounds = 2_000;
        let (pi, po) = (ping.clone(), pong.clone());
        let other = std::thread::spawn(move || {
            for _ in 0..rounds {
                block_on(pi.notified());
                po.notify();
            }
        });
        for _ in 0..rounds {
            ping.notify();
            block_on(pong.notified());
        }
        other.join().expect("join");
        assert!(!ping.try_take() && !pong.try_take());
    }

    #[test]
    fn stays_small() {
        // As small as tokio's Notify (32 bytes with tokio 1.54 on x86-64), which this replaces
        // in every session's outbox.
        assert!(size_of::<Wakeup>() <= 32, "{} bytes", size_of::<Wakeup>());
    }
}
