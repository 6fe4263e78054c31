//! The one conformance suite of [`BlockBackend`]: every engine (memory,
//! pool, io_uring) and the mirrored backend (2-way and 3-way) run it.
//! Included by path from `storage_conformance.rs` and the mirror tests.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use drbd_like_sync::storage::{BlockBackend, StorageErrorKind};

/// The size every backend under test must have.
pub const SIZE: u64 = 32 << 20;

pub fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// Runs the suite; panics naming the engine on the first failed check.
pub async fn conformance(b: Arc<dyn BlockBackend>) {
    let name = b.engine_name();
    assert_eq!(b.size(), SIZE, "{name}");

    // Unwritten areas read as zeroes and are reported unmapped.
    let z = b.read(0, 65536).await.unwrap();
    assert!(z.iter().all(|&x| x == 0), "{name}: fresh read not zero");
    let (mapped, len) = b.allocation(0).await.unwrap();
    assert!(!mapped, "{name}: fresh backend mapped");
    assert!(len > 0 && len <= SIZE, "{name}");

    // Read after write, unaligned and aligned.
    let data = pattern(3, 3 * 4096);
    b.write(1 << 20, data.clone(), false).await.unwrap();
    assert_eq!(b.read(1 << 20, data.len()).await.unwrap(), data, "{name}");
    let small = pattern(9, 700);
    b.write(5000, small.clone(), true).await.unwrap();
    assert_eq!(b.read(5000, 700).await.unwrap(), small, "{name}");
    let around = b.read(4096, 4096).await.unwrap();
    assert!(around[..904].iter().all(|&x| x == 0), "{name}");
    assert_eq!(&around[904..1604], &small[..], "{name}");
    assert!(around[1604..].iter().all(|&x| x == 0), "{name}");

    // Allocation reports the written region mapped.
    let (mapped, len) = b.allocation(1 << 20).await.unwrap();
    assert!(mapped, "{name}: written region not mapped");
    assert!(len >= 3 * 4096, "{name}: extent {len}");

    // Discard, then zeroes and a hole.
    b.discard(1 << 20, 3 * 4096).await.unwrap();
    let r = b.read(1 << 20, 3 * 4096).await.unwrap();
    assert!(
        r.iter().all(|&x| x == 0),
        "{name}: discarded range not zero"
    );
    let (mapped, len) = b.allocation(1 << 20).await.unwrap();
    assert!(!mapped, "{name}: discarded range still mapped");
    assert!(len >= 3 * 4096, "{name}");

    // write_zeroes with and without unmap.
    b.write(2 << 20, pattern(1, 8192), false).await.unwrap();
    b.write_zeroes(2 << 20, 8192, false).await.unwrap();
    assert!(
        b.read(2 << 20, 8192).await.unwrap().iter().all(|&x| x == 0),
        "{name}"
    );
    b.write(3 << 20, pattern(2, 8192), false).await.unwrap();
    b.write_zeroes(3 << 20, 8192, true).await.unwrap();
    assert!(
        b.read(3 << 20, 8192).await.unwrap().iter().all(|&x| x == 0),
        "{name}"
    );
    assert!(
        !b.allocation(3 << 20).await.unwrap().0,
        "{name}: unmap zeroes left mapping"
    );

    // FUA and flush succeed.
    b.write(0, pattern(4, 512), true).await.unwrap();
    b.flush().await.unwrap();

    // Out of range.
    for e in [
        b.read(SIZE - 100, 200).await.err(),
        b.write(SIZE, Bytes::from_static(b"x"), false).await.err(),
        b.discard(SIZE - 1, 2).await.err(),
        b.write_zeroes(u64::MAX - 1, 4, false).await.err(),
        b.allocation(SIZE).await.err(),
    ] {
        assert_eq!(
            e.map(|e| e.kind()),
            Some(StorageErrorKind::OutOfRange),
            "{name}"
        );
    }
    // The last byte is still addressable.
    b.write(SIZE - 1, Bytes::from_static(b"z"), false)
        .await
        .unwrap();
    assert_eq!(&b.read(SIZE - 1, 1).await.unwrap()[..], b"z");

    // Concurrent writes to disjoint ranges.
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            let d = pattern(i as u8, 16384);
            b.write((8 << 20) + i * 16384, d.clone(), i % 5 == 0)
                .await
                .unwrap();
            d
        }));
    }
    let mut expect = Vec::new();
    for t in tasks {
        expect.push(t.await.unwrap());
    }
    let all = b.read(8 << 20, 32 * 16384).await.unwrap();
    for (i, d) in expect.iter().enumerate() {
        assert_eq!(
            &all[i * 16384..(i + 1) * 16384],
            &d[..],
            "{name}: chunk {i}"
        );
    }
    // Concurrent reads.
    let reads: Vec<_> = (0..32u64)
        .map(|i| {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.read((8 << 20) + i * 16384, 16384).await.unwrap() })
        })
        .collect();
    for (i, t) in reads.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), expect[i], "{name}: concurrent read {i}");
    }
    // Large cached reads: a later write and a hole punched into the range are
    // seen by the next read, and a buffer already returned never changes
    // (Bytes are immutable: the transport computes data digests over them
    // before sending, and EXTENDED COPY writes them back into the same file;
    // a live view of the page cache would break both).
    let big = pattern(77, 1 << 20);
    b.write(4 << 20, big.clone(), false).await.unwrap();
    let first = b.read(4 << 20, 1 << 20).await.unwrap();
    assert!(first == big, "{name}: 1 MiB cached read");
    b.write((4 << 20) + 4096, pattern(78, 4096), false)
        .await
        .unwrap();
    b.discard((4 << 20) + 65536, 65536).await.unwrap();
    let second = b.read(4 << 20, 1 << 20).await.unwrap();
    assert!(
        first == big,
        "{name}: a returned buffer changed under a later write"
    );
    assert_eq!(&second[..4096], &big[..4096], "{name}: untouched head");
    assert_eq!(
        &second[4096..8192],
        &pattern(78, 4096)[..],
        "{name}: later write seen"
    );
    assert!(
        second[65536..131072].iter().all(|&x| x == 0),
        "{name}: hole reads as zeroes"
    );
    assert_eq!(&second[131072..], &big[131072..], "{name}: untouched tail");

    // Zero-copy READ data: a file engine hands out a cached range (the
    // 1 MiB just written and read is in the page cache); it reads as the
    // backend does, slices stay inside it, and nothing outside the
    // backend is handed out.
    let range = b.cached_range(4 << 20, 1 << 20);
    if name == "memory" || !drbd_like_sync::storage::zero_copy_available() {
        assert!(range.is_none(), "{name}: no zero-copy here");
    } else {
        let range = range.unwrap_or_else(|| panic!("{name}: cached range"));
        assert_eq!((range.offset(), range.len()), (4 << 20, 1 << 20), "{name}");
        let now = b.read(4 << 20, 1 << 20).await.unwrap();
        assert!(range.read_now().unwrap() == now, "{name}: range content");
        let part = range.slice(4096, 8192);
        assert_eq!((part.offset(), part.len()), ((4 << 20) + 4096, 8192));
        assert!(part.read_now().unwrap() == now.slice(4096..12288), "{name}");
        assert_eq!(range.slice(1 << 20, 10).len(), 0, "{name}: clamped");
    }
    assert!(
        b.cached_range(SIZE - 10, 20).is_none(),
        "{name}: beyond the end"
    );

    // A large write at an unaligned offset: the file engines cut it into
    // 64 KiB pieces (more than one round of linked SQEs for io_uring), with
    // and without FUA, and every byte lands where it belongs.
    let odd = pattern(91, (5 << 20) + 1234);
    b.write((16 << 20) + 12345, odd.clone(), false)
        .await
        .unwrap();
    let fua = pattern(92, (1 << 20) + 512);
    b.write((24 << 20) + 512, fua.clone(), true).await.unwrap();
    let back = b.read(16 << 20, (9 << 20) + 4096).await.unwrap();
    assert!(
        back[..12345].iter().all(|&x| x == 0),
        "{name}: before the large write"
    );
    assert!(
        back[12345..12345 + odd.len()] == odd[..],
        "{name}: large unaligned write"
    );
    assert!(
        back[12345 + odd.len()..8 << 20].iter().all(|&x| x == 0),
        "{name}: after the large write"
    );
    assert!(
        back[(8 << 20) + 512..(8 << 20) + 512 + fua.len()] == fua[..],
        "{name}: large FUA write"
    );
}
