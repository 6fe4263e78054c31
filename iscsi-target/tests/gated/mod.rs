//! A memory backend whose writes wait until the test opens a gate, and
//! that tells the test when one has arrived: a command "in flight" for as
//! long as the test needs, with no timing involved.
#![allow(dead_code)]

use bytes::Bytes;
use drbd_like_sync::storage::{BlockBackend, MemoryBackend, StorageError};
use tokio::sync::{Notify, Semaphore};

/// See the module docs.
pub struct GatedWrites {
    inner: MemoryBackend,
    /// Only writes at this byte offset wait; `None`: every write.
    at: Option<u64>,
    reached: Notify,
    gate: Semaphore,
}

impl GatedWrites {
    /// `size` bytes; writes at byte offset `at` (every write when `None`)
    /// wait until [`GatedWrites::open`].
    pub fn new(size: u64, at: Option<u64>) -> Self {
        GatedWrites {
            inner: MemoryBackend::new(size),
            at,
            reached: Notify::new(),
            gate: Semaphore::new(0),
        }
    }

    /// Returns once a gated write has reached the backend.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets every waiting and later gated write through.
    pub fn open(&self) {
        self.gate.add_permits(1);
    }
}

#[async_trait::async_trait]
impl BlockBackend for GatedWrites {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn engine_name(&self) -> &'static str {
        "gated"
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        if self.at.is_none_or(|at| at == offset) {
            self.reached.notify_one();
            // The permit goes back when dropped: once open, the gate stays open.
            let _open = self.gate.acquire().await;
        }
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        self.inner.write_zeroes(offset, len, unmap).await
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        self.inner.allocation(offset).await
    }
}
