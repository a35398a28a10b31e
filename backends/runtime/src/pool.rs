//! The worker threads: a persistent pool of workers pulling work items off
//! an atomic counter, and the raw pointer type the work closures share.
//!
//! Starting a thread costs about half a millisecond on some machines (VMs),
//! which every kernel call paid when each call started its own; the pool's
//! workers are started once and parked between calls. A call takes idle
//! workers for itself (starting more when there are too few), so concurrent
//! and nested calls never wait on each other, and hands them back when its
//! items are done.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

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

/// The stack of every pooled worker; a call asking for more runs on
/// threads of its own.
const POOL_STACK: usize = 16 << 20;
/// Idle workers kept beyond this many exit.
const MAX_IDLE: usize = 64;

/// What a worker runs: a call's share of the items, with its borrows
/// erased (the call waits for it to finish, see [`run_parallel`]).
type Task = Box<dyn FnOnce() + Send + 'static>;

/// A parked worker thread, woken by sending it a task.
struct Worker {
    tx: Sender<Task>,
}

/// The idle workers, and the process that started them (a forked child
/// inherits the list but not the threads).
struct Idle {
    pid: u32,
    workers: Vec<Worker>,
}

static IDLE: Mutex<Idle> = Mutex::new(Idle { pid: 0, workers: Vec::new() });

fn idle() -> std::sync::MutexGuard<'static, Idle> {
    // The list stays consistent whatever panicked while it was held.
    let mut g = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if g.pid != pid {
        g.pid = pid;
        g.workers.clear();
    }
    g
}

fn spawn_worker() -> std::io::Result<Worker> {
    let (tx, rx) = std::sync::mpsc::channel::<Task>();
    std::thread::Builder::new().name("tdl-worker".into()).stack_size(POOL_STACK).spawn(move || {
        // Exits when the pool drops its sender.
        for task in rx {
            task();
        }
    })?;
    Ok(Worker { tx })
}

/// Up to `n` workers: idle ones first, then new ones; an error only when
/// not even one can be had.
fn take_workers(n: usize) -> Result<Vec<Worker>, RtError> {
    let mut got: Vec<Worker> = {
        let mut g = idle();
        let keep = g.workers.len().saturating_sub(n);
        g.workers.split_off(keep)
    };
    while got.len() < n {
        match spawn_worker() {
            Ok(w) => got.push(w),
            Err(e) if got.is_empty() => return Err(RtError::new(format!("cannot start a worker thread: {e}"))),
            Err(_) => break,
        }
    }
    Ok(got)
}

fn give_back(workers: Vec<Worker>) {
    let mut g = idle();
    let room = MAX_IDLE.saturating_sub(g.workers.len());
    g.workers.extend(workers.into_iter().take(room));
}

/// Runs `work(i)` for every `i < items` on up to `threads` worker threads
/// (each with at least `stack` bytes of stack), handing items out through
/// an atomic counter; returns the number of threads used. The caller's
/// thread waits. A panic in `work` reaches the caller once every worker is
/// done; an error only when no worker thread can be started.
pub fn run_parallel(items: usize, threads: usize, stack: usize, work: impl Fn(usize) + Sync) -> Result<usize, RtError> {
    let threads = threads.clamp(1, items.max(1));
    if stack > POOL_STACK {
        return run_scoped(items, threads, stack, &work);
    }
    let workers = take_workers(threads)?;
    let next = AtomicUsize::new(0);
    let (done_tx, done_rx) = channel::<Option<Box<dyn Any + Send>>>();
    let (work, next) = (&work as &(dyn Fn(usize) + Sync), &next);
    let mut alive = Vec::with_capacity(workers.len());
    for w in workers {
        let done = done_tx.clone();
        let task: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                work(i);
            }));
            // The task's last use of what it borrows.
            let _ = done.send(r.err());
        });
        // SAFETY: only the lifetime changes. The task borrows `work` and
        // `next`, which live until this function returns, and this function
        // returns only after every task it sent has sent its message or
        // been dropped (the loop below ends when every sender is gone).
        let task = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Task>(task) };
        if w.tx.send(task).is_ok() {
            alive.push(w);
        }
    }
    let sent = alive.len();
    drop(done_tx);
    let mut panic = None;
    // Ends after `sent` messages, or early only when every task is gone.
    for p in done_rx.iter().take(sent).flatten() {
        panic = Some(p);
    }
    give_back(alive);
    if let Some(p) = panic {
        resume_unwind(p);
    }
    if sent == 0 {
        // No worker took the task (none alive): run on threads of our own.
        return run_scoped(items, threads, stack, work);
    }
    Ok(sent)
}

/// [`run_parallel`] on threads started for this call.
fn run_scoped(items: usize, threads: usize, stack: usize, work: &(dyn Fn(usize) + Sync)) -> Result<usize, RtError> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| -> Result<(), RtError> {
        for _ in 0..threads {
            let next = &next;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(items: usize, threads: usize, stack: usize) -> Vec<usize> {
        let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
        let used = run_parallel(items, threads, stack, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert!(used >= 1 && used <= threads.max(1));
        hits.iter().map(|h| h.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn every_item_runs_once() {
        for (items, threads) in [(0, 1), (1, 4), (7, 2), (100, 3), (5, 0)] {
            assert!(counts(items, threads, 1 << 20).iter().all(|&c| c == 1), "{items} items on {threads}");
        }
        // A stack beyond the pool's: threads of its own.
        assert!(counts(9, 2, POOL_STACK + 1).iter().all(|&c| c == 1));
    }

    #[test]
    fn concurrent_and_nested_calls() {
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        let total = AtomicUsize::new(0);
                        run_parallel(4, 2, 1 << 20, |i| {
                            let inner = AtomicUsize::new(0);
                            run_parallel(3, 2, 1 << 20, |j| {
                                inner.fetch_add(j + 1, Ordering::Relaxed);
                            })
                            .unwrap();
                            total.fetch_add(i * inner.load(Ordering::Relaxed), Ordering::Relaxed);
                        })
                        .unwrap();
                        assert_eq!(total.load(Ordering::Relaxed), 6 * (1 + 2 + 3));
                    }
                });
            }
        });
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            run_parallel(8, 2, 1 << 20, |i| {
                if i == 5 {
                    panic!("item five");
                }
            })
        });
        let p = r.expect_err("panics");
        assert_eq!(p.downcast_ref::<&str>().copied(), Some("item five"));
        assert!(counts(10, 2, 1 << 20).iter().all(|&c| c == 1));
    }
}
