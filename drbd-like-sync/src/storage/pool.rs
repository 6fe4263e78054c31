//! Thread-pool engine: positional `pread`/`pwrite` on tokio's blocking pool.
//! The fallback when io_uring is unavailable or disabled.

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_range, fileops, BlockBackend, StorageError, Tuning};

/// File-backed engine that runs each request with `spawn_blocking`.
#[derive(Debug)]
pub struct PoolBackend {
    file: Arc<File>,
    size: u64,
    /// Inline reads and writes, zero-copy READ data.
    fast: fileops::FastPaths,
}

impl PoolBackend {
    /// Wrap an already sized file, with the default fast paths.
    pub fn new(file: File, size: u64) -> Self {
        Self::with_tuning(file, size, Tuning::default())
    }

    /// Wrap an already sized file, with the fast paths of `tuning`.
    pub fn with_tuning(file: File, size: u64, tuning: Tuning) -> Self {
        PoolBackend {
            file: Arc::new(file),
            size,
            fast: fileops::FastPaths::new(tuning),
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> Result<T, StorageError> + Send + 'static,
    {
        fileops::on_blocking_pool(&self.file, f).await
    }
}

#[async_trait]
impl BlockBackend for PoolBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn engine_name(&self) -> &'static str {
        "pool"
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        check_range(offset, len as u64, self.size)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if let Some(data) = fileops::read_nowait(&self.file, offset, len) {
            return Ok(data);
        }
        self.run(move |f| fileops::read_at(f, offset, len)).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        check_range(offset, data.len() as u64, self.size)?;
        if let Some(done) = self.fast.write_inline(&self.file, offset, &data, fua) {
            return done;
        }
        if data.is_empty() && !fua {
            return Ok(());
        }
        self.run(move |f| fileops::write_at(f, offset, &data, fua))
            .await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.run(fileops::flush).await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.run(move |f| fileops::discard(f, offset, len)).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.run(move |f| fileops::write_zeroes(f, offset, len, unmap))
            .await
    }
    fn cached_range(&self, offset: u64, len: usize) -> Option<super::FileRange> {
        self.fast.cached_range(&self.file, self.size, offset, len)
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        if offset >= self.size {
            return Err(StorageError::OutOfRange {
                offset,
                len: 1,
                size: self.size,
            });
        }
        let size = self.size;
        self.run(move |f| fileops::allocation(f, offset, size))
            .await
    }
}
