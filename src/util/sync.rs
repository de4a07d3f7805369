//! Locks for the short critical sections of the engine.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, even when a panic poisoned it.
///
/// Every critical section that uses this is a few assignments with no `.await` and no call
/// out: a panic cannot leave half a state behind, so a poisoned lock is still usable, and
/// carrying on beats turning one panicked task into a crashed run.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
