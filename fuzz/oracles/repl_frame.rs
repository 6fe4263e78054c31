//! The oracle of the `repl_frame` fuzz target: fuzzes the replication protocol's framer and decoder
//! (`drbd_like_sync::proto::decode`) on arbitrary byte streams.
//!
//! The first input byte picks the receiver's state: bits 0-1 the frame
//! limit (the 16 MiB default, 4096, 64 or 0 body bytes), bits 2.. where the
//! stream is cut in two, so the "need more bytes" path runs too. The rest
//! is the stream.
//!
//! Oracles: no panic; `Ok(None)` consumes nothing; a decoded message
//! consumed bytes; it re-encodes to one frame that decodes, under the same
//! limits, to the same message and consumes exactly the re-encoded bytes.

use bytes::BytesMut;
use drbd_like_sync::proto::{decode, encode, Limits, Message};

/// Runs one input through the oracles; panics when one fails.
pub fn check(input: &[u8]) {
    let Some((&sel, stream)) = input.split_first() else {
        return;
    };
    let limits = Limits {
        max_body_len: match sel & 3 {
            0 => Limits::default().max_body_len,
            1 => 4096,
            2 => 64,
            _ => 0,
        },
    };
    let cut = usize::from(sel >> 2) * 4 % (stream.len() + 1);
    let mut buf = BytesMut::new();
    for piece in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, &limits) {
                Ok(Some(msg)) => {
                    assert!(buf.len() < before, "a message consumed no bytes");
                    check_round_trip(&msg, &limits);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

fn check_round_trip(msg: &Message, limits: &Limits) {
    let mut wire = BytesMut::new();
    encode(msg, &mut wire);
    let len = wire.len();
    let again = decode(&mut wire, limits)
        .expect("re-encoded message decodes")
        .expect("re-encoded message is complete");
    assert!(
        wire.is_empty(),
        "re-encoded frame of {len} bytes has a wrong length"
    );
    assert_eq!(&again, msg, "decode(encode(msg)) != msg");
}
