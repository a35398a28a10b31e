//! The worker threads: scoped threads pulling work items off an atomic
//! counter, and the raw pointer type the work closures share.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::RtError;

/// A raw pointer shared with worker threads: the callers guarantee that
/// what it points to outlives them and that writes through it are disjoint.
#[derive(Clone, Copy)]
pub struct Shared<T>(pub *mut T);
// SAFETY: see the type's docs; every user upholds it.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the whole `Shared`).
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Runs `work(i)` for every `i < items` on up to `threads` worker threads
/// (each with `stack` bytes of stack), handing items out through an atomic
/// counter.
pub fn run_parallel(items: usize, threads: usize, stack: usize, work: impl Fn(usize) + Sync) -> Result<usize, RtError> {
    let threads = threads.clamp(1, items.max(1));
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| -> Result<(), RtError> {
        for _ in 0..threads {
            let (next, work) = (&next, &work);
            std::thread::Builder::new()
                .stack_size(stack)
                .spawn_scoped(sc, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    work(i);
                })
                .map_err(|e| RtError::new(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(())
    })?;
    Ok(threads)
}
