//! Copying one block backend into another of the same size without filling
//! holes: the data path of `locus image import` (a file into an image's
//! writer) and `locus image export` (the writer into a file).
//!
//! Owns the walk and what counts as a hole. The source's holes, as its
//! `allocation` reports them (SEEK_DATA/SEEK_HOLE for a file; a mirror
//! without a local copy says "mapped" everywhere), are not read; its data
//! is read in pieces of at most [`PIECE`] bytes, and chunks of
//! [`ZERO_CHUNK`] bytes (aligned to it) that hold only zeros are not
//! written. The destination must read as zeros wherever nothing is
//! written: a new image, or a new file sized with `set_len`. Knows nothing
//! of images, leases or file formats.

use bytes::Bytes;
use drbd_like_sync::storage::{BlockBackend, StorageError};
use serde::Serialize;

/// Data is read and written in pieces of at most this many bytes.
pub const PIECE: u64 = 4 << 20;
/// An aligned chunk of this many bytes that holds only zeros is not written.
pub const ZERO_CHUNK: u64 = 64 << 10;

static ZEROS: [u8; ZERO_CHUNK as usize] = [0; ZERO_CHUNK as usize];

/// How far a copy got, in bytes of the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Copied {
    /// Bytes of the source covered so far (from offset 0).
    pub done: u64,
    /// Bytes written to the destination.
    pub data_bytes: u64,
    /// Bytes not written: holes of the source and chunks of zeros.
    pub hole_bytes: u64,
}

/// Why a copy stopped. What was written before stays written.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The two sides differ in size.
    #[error("the source is {src} bytes but the destination {dst}")]
    Size {
        /// The source's size.
        src: u64,
        /// The destination's size.
        dst: u64,
    },
    /// Reading the source (or asking its allocation) failed.
    #[error("reading the source at byte {offset} failed")]
    Read {
        /// Where.
        offset: u64,
        /// The backend's error.
        #[source]
        source: StorageError,
    },
    /// Writing the destination failed.
    #[error("writing {len} bytes at byte {offset} failed")]
    Write {
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
        /// The backend's error.
        #[source]
        source: StorageError,
    },
    /// The final flush of the destination failed: what was written may not
    /// be durable.
    #[error("flushing the destination failed")]
    Flush(#[source] StorageError),
}

/// Copies `src` into `dst` from offset 0 to the end, skipping holes and
/// chunks of zeros, then flushes `dst`. Calls `progress` after every piece
/// and every hole. Pieces go one at a time, in order; cancelling (dropping
/// the future) leaves the pieces written so far.
pub async fn copy_sparse(
    src: &dyn BlockBackend,
    dst: &dyn BlockBackend,
    progress: &mut dyn FnMut(&Copied),
) -> Result<Copied, CopyError> {
    let size = src.size();
    if dst.size() != size {
        return Err(CopyError::Size {
            src: size,
            dst: dst.size(),
        });
    }
    let mut c = Copied::default();
    while c.done < size {
        let at = c.done;
        let (mapped, len) = src
            .allocation(at)
            .await
            .map_err(|source| CopyError::Read { offset: at, source })?;
        let end = at + len.clamp(1, size - at);
        if !mapped {
            c.hole_bytes += end - at;
            c.done = end;
            progress(&c);
            continue;
        }
        while c.done < end {
            let at = c.done;
            let n = PIECE.min(end - at);
            let data = src
                .read(at, n as usize)
                .await
                .map_err(|source| CopyError::Read { offset: at, source })?;
            for (run, zeros) in runs(at, &data) {
                if zeros {
                    c.hole_bytes += run.len() as u64;
                    continue;
                }
                let (offset, len) = (at + run.start as u64, run.len() as u64);
                dst.write(offset, data.slice(run), false)
                    .await
                    .map_err(|source| CopyError::Write {
                        offset,
                        len,
                        source,
                    })?;
                c.data_bytes += len;
            }
            c.done = at + n;
            progress(&c);
        }
    }
    dst.flush().await.map_err(CopyError::Flush)?;
    Ok(c)
}

/// `data` (read at byte `base`) as maximal runs of all-zero or not-all-zero
/// chunks, the chunks cut at multiples of [`ZERO_CHUNK`] of the backend's
/// offsets: `(range in data, all zeros)`, in order.
fn runs(base: u64, data: &Bytes) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut out: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let to_boundary = ZERO_CHUNK - (base + pos as u64) % ZERO_CHUNK;
        let end = data.len().min(pos + to_boundary as usize);
        let chunk = &data[pos..end];
        let zeros = chunk == &ZEROS[..chunk.len()];
        match out.last_mut() {
            Some((r, z)) if *z == zeros => r.end = end,
            _ => out.push((pos..end, zeros)),
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drbd_like_sync::storage::MemoryBackend;

    const K64: u64 = ZERO_CHUNK;

    async fn put(b: &MemoryBackend, offset: u64, len: u64, byte: u8) {
        b.write(offset, Bytes::from(vec![byte; len as usize]), false)
            .await
            .expect("write");
    }

    async fn all(b: &MemoryBackend) -> Vec<u8> {
        b.read(0, b.size() as usize).await.expect("read").to_vec()
    }

    #[test]
    fn runs_cut_at_absolute_chunk_boundaries_and_merge_alike_chunks() {
        // Read at 32 KiB: the first chunk is the 32 KiB up to 64 KiB.
        let mut v = vec![0u8; (4 * K64) as usize];
        v[(K64 / 2 + 7) as usize] = 1; // byte 64K + 7: the chunk [64K, 128K)
        let r = runs(K64 / 2, &Bytes::from(v));
        let k = K64 as usize;
        assert_eq!(
            r,
            vec![
                (0..k / 2, true),
                (k / 2..k / 2 + k, false),
                (k / 2 + k..4 * k, true)
            ]
        );
    }

    #[tokio::test]
    async fn holes_and_zero_chunks_are_not_written_and_data_lands_where_it_was() {
        let size = 48 << 20;
        let src = MemoryBackend::new(size);
        put(&src, 0, 4096, 0xa1).await;
        // 9 MiB of data across a piece boundary, with a zero chunk inside.
        put(&src, 5 << 20, 9 << 20, 0xb2).await;
        put(&src, (8 << 20) + K64, K64, 0).await;
        put(&src, (40 << 20) + 512, 512, 0xc3).await;
        // Allocated, but zeros: read, not written.
        put(&src, 30 << 20, 2 << 20, 0).await;
        let dst = MemoryBackend::new(size);
        let mut seen = Vec::new();
        let c = copy_sparse(&src, &dst, &mut |c| seen.push(*c))
            .await
            .expect("copy");
        assert_eq!(all(&dst).await, all(&src).await);
        // Memory pages are 4 KiB: the first and the last write are one page
        // each; the middle one less its zero chunk.
        let data = 4096 + (9 << 20) - K64 + 4096;
        assert_eq!(c.data_bytes, data, "{c:?}");
        assert_eq!(c.data_bytes + c.hole_bytes, size);
        assert_eq!(c.done, size);
        assert!(seen.windows(2).all(|w| w[0].done < w[1].done));
        // The destination holds data only where the source had some.
        let mut mapped = 0;
        let mut at = 0;
        while at < size {
            let (m, len) = dst.allocation(at).await.expect("allocation");
            if m {
                mapped += len;
            }
            at += len;
        }
        assert!(mapped <= data, "{mapped} bytes mapped for {data} of data");
    }

    #[tokio::test]
    async fn a_size_mismatch_is_refused_before_anything_is_written() {
        let src = MemoryBackend::new(1 << 20);
        put(&src, 0, 4096, 1).await;
        let dst = MemoryBackend::new(2 << 20);
        let e = copy_sparse(&src, &dst, &mut |_| {})
            .await
            .expect_err("sizes differ");
        assert!(matches!(e, CopyError::Size { .. }), "{e}");
        assert!(!dst.allocation(0).await.expect("allocation").0);
    }
}
