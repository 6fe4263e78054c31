//! The oracle of the `pdu_decode` fuzz target: fuzzes the PDU framer and decoder (RFC 7143 §11) on arbitrary byte streams.
//!
//! The first input byte picks the connection state: bit 0 HeaderDigest,
//! bit 1 DataDigest, bit 2 the login-phase limits (8192-byte segments) or a
//! large MaxRecvDataSegmentLength (1 MiB); bits 3.. pick where the stream is
//! cut in two, so the "need more bytes" path runs too. The rest is the stream.
//!
//! Oracles: no panic; the framer never takes more bytes than it was given;
//! a decoded PDU re-encodes to bytes that frame to exactly their length and
//! decode to the same PDU.

use bytes::BytesMut;
use iscsi_target::pdu::{decode_frame, Digests, FrameLimits, Pdu};

/// Runs one input through the oracles; panics when one fails.
pub fn check(input: &[u8]) {
    let Some((&sel, stream)) = input.split_first() else {
        return;
    };
    let limits = FrameLimits {
        max_recv_data_segment: if sel & 4 != 0 {
            FrameLimits::LOGIN.max_recv_data_segment
        } else {
            1 << 20
        },
        header_digest: sel & 1 != 0,
        data_digest: sel & 2 != 0,
    };
    let cut = usize::from(sel >> 3) * 8 % (stream.len() + 1);
    let mut buf = BytesMut::new();
    for piece in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, &limits) {
                Ok(Some(raw)) => {
                    assert!(buf.len() < before, "a frame consumed no bytes");
                    if let Ok(pdu) = Pdu::decode(&raw) {
                        check_round_trip(&pdu, &limits);
                    }
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

fn check_round_trip(pdu: &Pdu, limits: &FrameLimits) {
    let digests = Digests {
        header: limits.header_digest,
        data: limits.data_digest,
    };
    let wire = pdu.to_vec(digests);
    let mut buf = BytesMut::from(&wire[..]);
    let raw = decode_frame(&mut buf, limits)
        .expect("re-encoded PDU frames")
        .expect("re-encoded PDU is complete");
    assert!(buf.is_empty(), "re-encoded PDU has a wrong length");
    assert!(raw.data_digest_ok);
    let again = Pdu::decode(&raw).expect("re-encoded PDU decodes");
    // Fields the encoder fixes (e.g. Reject's ITT) may differ from the input
    // bytes, but a second round must be stable.
    assert_eq!(&again, pdu, "decode(encode(pdu)) != pdu");
}
