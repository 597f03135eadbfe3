//! In-memory storage: a `DurableState` behind a mutex, shared by clones.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paxos_core::{DurableState, Storage, StorageOp};

/// Errors of [`MemoryStorage`]: only the injected failure, for tests of a node's
/// reaction to a failed write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// A failure was requested with [`MemoryStorage::fail_writes`].
    #[error("injected write failure")]
    Injected,
}

#[derive(Default)]
struct Inner {
    state: DurableState,
    appends: u64,
    fail_writes: bool,
}

/// Storage held in memory. Clones share one store, so a test can "restart" a node
/// by building a new one on a clone and keep exactly what was appended.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the state appended so far.
    pub fn snapshot(&self) -> DurableState {
        self.lock().state.clone()
    }

    /// How many non-empty `append` calls succeeded.
    pub fn appends(&self) -> u64 {
        self.lock().appends
    }

    /// Makes every later `append` fail (or succeed again), to test failure handling.
    pub fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    type Error = MemoryError;

    async fn append(&self, ops: &[StorageOp]) -> Result<(), MemoryError> {
        let mut inner = self.lock();
        if inner.fail_writes {
            return Err(MemoryError::Injected);
        }
        for op in ops {
            inner.state.apply(op);
        }
        inner.appends += 1;
        Ok(())
    }

    async fn load(&self) -> Result<DurableState, MemoryError> {
        Ok(self.lock().state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_storage_conformance_suite() {
        let store = MemoryStorage::new();
        futures::executor::block_on(paxos_core::conformance::storage_suite(|| {
            let store = store.clone();
            async move { store }
        }));
    }

    #[test]
    fn injected_failures_are_reported() {
        let store = MemoryStorage::new();
        store.fail_writes(true);
        let result = futures::executor::block_on(store.append(&[StorageOp::Round(1)]));
        assert_eq!(result, Err(MemoryError::Injected));
    }
}
