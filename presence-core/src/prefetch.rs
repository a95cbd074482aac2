//! Software prefetch: a hint that pulls a cache line in before the code needs it.
//!
//! At ten million users every event lands on a cold line of the user and session tables (and
//! of the caller's own tables): one full memory latency per event, paid in series. Callers
//! that know the next events (a tick's worth of them, a sorted calendar) prefetch a few events
//! ahead so those misses overlap with useful work. The `unsafe` here is documented and local:
//! `PREFETCHT0` is a pure hint — it cannot fault, changes no memory and no program state, and
//! the address comes from a live reference.

/// Asks the CPU to bring the cache line holding `*r` into every cache level. A no-op on other
/// architectures.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` only hints the cache; it never dereferences the pointer in a way
    // that can fault or be observed, and the pointer is derived from a valid reference. SSE
    // (which provides PREFETCHT0) is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
