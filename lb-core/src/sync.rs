//! Locks that ignore poisoning, for the plain data this crate guards with them.
//!
//! A `std` lock is *poisoned* when a thread panics while holding it, and every later
//! `lock()` returns an error. The data behind this crate's locks (an `Option<Wire>`, a
//! list of subchannels, a load report) is always whole between two statements, so a
//! panic elsewhere cannot leave it half-written: these helpers take the guard anyway,
//! instead of spreading the panic to every caller.
//!
//! May import: nothing of this crate.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `lock`, poisoned or not.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `lock`, poisoned or not.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
