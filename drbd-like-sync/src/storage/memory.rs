//! In-memory sparse engine for tests: 4 KiB pages in a `BTreeMap`, absent
//! pages read as zeroes, discard drops whole pages and zeroes partial ones.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{check_range, BlockBackend, StorageError};

/// Allocation granularity of the memory engine, in bytes.
pub const PAGE: u64 = 4096;

/// Sparse in-memory backend.
#[derive(Debug)]
pub struct MemoryBackend {
    size: u64,
    pages: RwLock<BTreeMap<u64, Box<[u8]>>>,
}

impl MemoryBackend {
    /// A zero-filled, fully unmapped backend of `size` bytes.
    pub fn new(size: u64) -> Self {
        MemoryBackend {
            size,
            pages: RwLock::new(BTreeMap::new()),
        }
    }

    fn zero_range(&self, offset: u64, len: u64, unmap: bool) {
        let mut pages = self.pages.write().unwrap_or_else(|p| p.into_inner());
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = pos % PAGE;
            let n = (PAGE - in_page).min(end - pos);
            if n == PAGE && unmap {
                pages.remove(&idx);
            } else if let Some(p) = pages.get_mut(&idx) {
                p[in_page as usize..(in_page + n) as usize].fill(0);
            } else if !unmap {
                pages.insert(idx, vec![0u8; PAGE as usize].into_boxed_slice());
            }
            pos += n;
        }
    }
}

#[async_trait]
impl BlockBackend for MemoryBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn engine_name(&self) -> &'static str {
        "memory"
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        check_range(offset, len as u64, self.size)?;
        let mut buf = BytesMut::zeroed(len);
        let pages = self.pages.read().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(len - done);
            if let Some(p) = pages.get(&idx) {
                buf[done..done + n].copy_from_slice(&p[in_page..in_page + n]);
            }
            done += n;
        }
        Ok(buf.freeze())
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), StorageError> {
        check_range(offset, data.len() as u64, self.size)?;
        let mut pages = self.pages.write().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let p = pages
                .entry(idx)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
    async fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.zero_range(offset, len, true);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.zero_range(offset, len, unmap);
        Ok(())
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        if offset >= self.size {
            return Err(StorageError::OutOfRange {
                offset,
                len: 1,
                size: self.size,
            });
        }
        let pages = self.pages.read().unwrap_or_else(|p| p.into_inner());
        let idx = offset / PAGE;
        let mapped = pages.contains_key(&idx);
        // Walk forward while the state stays the same.
        let mut next = idx + 1;
        if mapped {
            while pages.contains_key(&next) {
                next += 1;
            }
        } else {
            next = pages
                .range(idx..)
                .next()
                .map(|(k, _)| *k)
                .unwrap_or(u64::MAX);
        }
        let end = next.saturating_mul(PAGE).min(self.size);
        Ok((mapped, end - offset))
    }
}
