//! Locks that outlive a panic, and deadline waits on them.
//!
//! A handler that panics while holding one of the plugin's locks must not
//! take the plugin down with it: every lock here is taken past poisoning
//! (the data they guard stays consistent between statements).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for `changed`, taking `guard`'s lock back poisoned or not.
pub(crate) fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
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
