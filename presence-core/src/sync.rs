//! The one door through which the engine reaches for locks, so that loom can model the very
//! code that ships.
//!
//! In a normal build these are `parking_lot`'s locks. Under `RUSTFLAGS="--cfg loom"` they are
//! thin wrappers around loom's, with the same (non-poisoning) API, so the loom models in
//! `tests/loom.rs` explore every interleaving of the shipped engine. `parallel_for` is the
//! other seam: a crossbeam scope in production, plain sequential calls under loom (loom has no
//! scoped threads, and the work it splits touches disjoint data).

#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(not(loom))]
pub(crate) fn downgrade<'a, T>(guard: RwLockWriteGuard<'a, T>) -> RwLockReadGuard<'a, T> {
    RwLockWriteGuard::downgrade(guard)
}

/// Runs `f(i)` for every `i` in `0..n`, spread over at most `threads` OS threads, and returns
/// the results in index order.
#[cfg(not(loom))]
pub(crate) fn parallel_map<R: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    {
        let chunk = n.div_ceil(threads);
        let parts: Vec<&mut [Option<R>]> = out.chunks_mut(chunk).collect();
        crossbeam_utils::thread::scope(|s| {
            for (t, part) in parts.into_iter().enumerate() {
                s.spawn(move |_| {
                    for (j, slot) in part.iter_mut().enumerate() {
                        *slot = Some(f(t * chunk + j));
                    }
                });
            }
        })
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }
    out.into_iter().flatten().collect()
}

#[cfg(loom)]
pub(crate) use self::loom_shim::*;

#[cfg(loom)]
mod loom_shim {
    use std::ops::Deref;

    /// `parking_lot::Mutex`'s API over loom's mutex.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    /// `parking_lot::RwLock`'s API over loom's lock.
    #[derive(Debug)]
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    pub(crate) type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

    /// loom's write guard cannot be downgraded atomically, so under loom a "downgraded" guard
    /// keeps exclusive access: a stronger exclusion than production, never a weaker one.
    pub(crate) enum RwLockReadGuard<'a, T> {
        Read(loom::sync::RwLockReadGuard<'a, T>),
        Write(loom::sync::RwLockWriteGuard<'a, T>),
    }

    impl<T> Deref for RwLockReadGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            match self {
                Self::Read(g) => g,
                Self::Write(g) => g,
            }
        }
    }

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            RwLockReadGuard::Read(self.0.read().unwrap_or_else(|p| p.into_inner()))
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|p| p.into_inner())
        }
    }

    pub(crate) fn downgrade<'a, T>(guard: RwLockWriteGuard<'a, T>) -> RwLockReadGuard<'a, T> {
        RwLockReadGuard::Write(guard)
    }

    pub(crate) fn parallel_map<R: Send>(
        n: usize,
        _threads: usize,
        f: impl Fn(usize) -> R + Sync,
    ) -> Vec<R> {
        (0..n).map(f).collect()
    }
}
