//! Locks that outlive a panic, and deadline waits on them and on futures.
//!
//! A handler that panics while holding one of the plugin's locks must not
//! take the plugin down with it: every lock here is taken past poisoning
//! (the data they guard stays consistent between statements).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for `changed`, taking `guard`'s lock back poisoned or not.
pub(crate) fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits as long as it takes until `take` finds what it looks for in
/// `shared` (re-checked each time `changed` is notified).
pub(crate) fn wait_until<S, T>(
    shared: &Mutex<S>,
    changed: &Condvar,
    mut take: impl FnMut(&mut S) -> Option<T>,
) -> T {
    let mut guard = lock(shared);
    loop {
        if let Some(found) = take(&mut guard) {
            return found;
        }
        guard = wait(changed, guard);
    }
}

/// Waits until `take` finds what it looks for in `shared` (re-checked each
/// time `changed` is notified), or until `deadline`: then `None`.
pub(crate) fn wait_for<S, T>(
    shared: &Mutex<S>,
    changed: &Condvar,
    deadline: Instant,
    mut take: impl FnMut(&mut S) -> Option<T>,
) -> Option<T> {
    let mut guard = lock(shared);
    loop {
        if let Some(found) = take(&mut guard) {
            return Some(found);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        guard = changed
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Runs `future` to completion on this thread, or gives up at `deadline`:
/// then `None` (the future is dropped). No thread is started.
pub(crate) fn block_on_until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Some(output);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // A wake between the poll and here leaves the token set: no wake
        // is lost, and a spurious return only polls once more.
        thread::park_timeout(left);
    }
}
