//! Bad input to the PDU codec (RFC 7143 §11, §13.1, §7.8): each malformed PDU
//! gets its typed error, limits are enforced before memory is reserved, and
//! no byte sequence makes the framer or decoder panic.

use bytes::{Bytes, BytesMut};
use iscsi_target::pdu::digest::crc32c;
use iscsi_target::pdu::{
    decode_frame, Ahs, Bhs, DataIn, Digests, FrameError, FrameLimits, Itt, NopOut, Opcode, Pdu,
    PduError, Residual, ScsiCommand, SeqNum, TaskAttr, Ttt, BHS_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;

const NO_DIGESTS: Digests = Digests {
    header: false,
    data: false,
};

fn limits(max: u32, header_digest: bool, data_digest: bool) -> FrameLimits {
    FrameLimits {
        max_recv_data_segment: max,
        header_digest,
        data_digest,
    }
}

fn nop_out(data: &'static [u8]) -> Pdu {
    Pdu::new(
        Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: Itt(7),
            ttt: Ttt::RESERVED,
            cmd_sn: SeqNum(1),
            exp_stat_sn: SeqNum(1),
        }),
        Bytes::from_static(data),
    )
}

fn scsi_command() -> ScsiCommand {
    ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
        lun: 0,
        itt: Itt(0x1234),
        expected_len: 512,
        cmd_sn: SeqNum(10),
        exp_stat_sn: SeqNum(3),
        cdb: [0x7f; 16],
    }
}

/// A 48-byte header with the given opcode byte and DataSegmentLength.
fn header(opcode_byte: u8, data_len: u32) -> [u8; BHS_LEN] {
    let mut h = [0u8; BHS_LEN];
    h[0] = opcode_byte;
    h[1] = 0x80;
    h[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
    h
}

fn frame_one(
    bytes: &[u8],
    l: &FrameLimits,
) -> Result<Option<iscsi_target::pdu::RawPdu>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    decode_frame(&mut buf, l)
}

// ---------------------------------------------------------------- opcodes

#[test]
fn reserved_opcodes_are_typed_errors() {
    let defined = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26,
        0x31, 0x32, 0x3f,
    ];
    let l = limits(8192, false, false);
    let mut reserved = 0;
    for op in 0u8..64 {
        for i_bit in [0, 0x40] {
            let raw = frame_one(&header(op | i_bit, 0), &l)
                .expect("frames")
                .expect("complete");
            let got = Pdu::decode(&raw);
            if defined.contains(&op) {
                assert!(got.is_ok(), "opcode {op:#04x}: {got:?}");
            } else {
                assert_eq!(got, Err(PduError::ReservedOpcode(op)), "opcode {op:#04x}");
                reserved += 1;
            }
        }
    }
    assert_eq!(reserved, 2 * (64 - 18));
    for op in [0x07, 0x1c, 0x3e] {
        let raw = frame_one(&header(op, 0), &l)
            .expect("frames")
            .expect("complete");
        assert_eq!(Pdu::decode(&raw), Err(PduError::ReservedOpcode(op)));
    }
}

#[test]
fn a_reserved_opcode_does_not_desynchronise_the_stream() {
    // The framer does not need the opcode: a PDU with a reserved opcode and a
    // data segment is cut at its end, so the next PDU decodes.
    let mut stream = header(0x1c, 5).to_vec();
    stream.extend_from_slice(b"hello\0\0\0");
    stream.extend_from_slice(&nop_out(b"").to_vec(NO_DIGESTS));
    let mut buf = BytesMut::from(&stream[..]);
    let l = limits(8192, false, false);
    let raw = decode_frame(&mut buf, &l)
        .expect("frames")
        .expect("complete");
    assert_eq!(&raw.data[..], b"hello");
    assert_eq!(Pdu::decode(&raw), Err(PduError::ReservedOpcode(0x1c)));
    let next = decode_frame(&mut buf, &l)
        .expect("frames")
        .expect("complete");
    assert_eq!(Pdu::decode(&next), Ok(nop_out(b"")));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------- limits

#[test]
fn data_segment_too_long_is_refused_from_the_header_alone() {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let l = limits(8192, hd, dd);
        for len in [8193, 65_536, 0xff_ffff] {
            // Only the 48 header bytes have arrived: no digest, no data.
            let mut buf = BytesMut::with_capacity(BHS_LEN);
            buf.extend_from_slice(&header(0x01, len));
            let cap = buf.capacity();
            assert_eq!(
                decode_frame(&mut buf, &l),
                Err(FrameError::DataSegmentTooLong { len, max: 8192 })
            );
            assert_eq!(buf.capacity(), cap, "no memory reserved for a refused PDU");
            assert!(buf.capacity() < 8192);
            assert_eq!(buf.len(), BHS_LEN, "nothing consumed");
        }
    }
}

#[test]
fn data_segment_at_the_limit_is_accepted_and_reservation_is_bounded() {
    let l = limits(8192, true, true);
    let mut buf = BytesMut::with_capacity(BHS_LEN);
    buf.extend_from_slice(&header(0x01, 8192));
    assert_eq!(decode_frame(&mut buf, &l), Ok(None));
    // The framer may reserve room for the rest of this PDU, and no more than
    // the PDU can occupy: BHS + max AHS + digests + data + padding.
    assert!(
        buf.capacity() <= BHS_LEN + 1020 + 4 + 8192 + 3 + 4,
        "reserved {}",
        buf.capacity()
    );
}

#[test]
fn fewer_than_48_bytes_need_more_and_reserve_nothing() {
    let l = limits(8192, false, false);
    let full = header(0x01, 0xff_ffff);
    for n in 0..BHS_LEN {
        let mut buf = BytesMut::with_capacity(n);
        buf.extend_from_slice(&full[..n]);
        let cap = buf.capacity();
        assert_eq!(decode_frame(&mut buf, &l), Ok(None), "{n} bytes");
        assert_eq!(buf.capacity(), cap);
        assert_eq!(buf.len(), n);
    }
}

// ---------------------------------------------------------------- digests

#[test]
fn corrupted_header_digest_is_a_frame_error() {
    let mut wire = nop_out(b"ping").to_vec(Digests {
        header: true,
        data: true,
    });
    let good = u32::from_le_bytes(wire[48..52].try_into().expect("4 bytes"));
    assert_eq!(good, crc32c(&wire[..48]));
    wire[50] ^= 0x01;
    let l = limits(8192, true, true);
    assert_eq!(
        frame_one(&wire, &l),
        Err(FrameError::HeaderDigest {
            received: good ^ 0x0001_0000,
            computed: good
        })
    );
}

#[test]
fn header_digest_covers_the_ahs() {
    let pdu = Pdu {
        bhs: Bhs::ScsiCommand(scsi_command()),
        ahs: vec![Ahs {
            ahs_type: Ahs::EXTENDED_CDB,
            specific: 0,
            data: Bytes::from_static(&[0xab; 16]),
        }],
        data: Bytes::new(),
    };
    let mut wire = pdu.to_vec(Digests {
        header: true,
        data: false,
    });
    assert_eq!(wire.len(), 48 + 20 + 4);
    let l = limits(8192, true, false);
    let raw = frame_one(&wire, &l).expect("frames").expect("complete");
    assert_eq!(Pdu::decode(&raw), Ok(pdu));
    wire[60] ^= 0x80; // inside the extended CDB bytes
    assert!(matches!(
        frame_one(&wire, &l),
        Err(FrameError::HeaderDigest { .. })
    ));
}

#[test]
fn corrupted_data_digest_flags_only_that_pdu() {
    let d = Digests {
        header: true,
        data: true,
    };
    let first = nop_out(b"abcdef"); // 6 bytes + 2 padding
    let wire = first.to_vec(d);
    let data_at = 48 + 4;
    // Corrupt a data byte, a padding byte, and the digest itself in turn.
    for at in [data_at, data_at + 6, wire.len() - 1] {
        let mut bad = wire.clone();
        bad[at] ^= 0x20;
        bad.extend_from_slice(&nop_out(b"next").to_vec(d));
        let mut buf = BytesMut::from(&bad[..]);
        let l = limits(8192, true, true);
        let raw = decode_frame(&mut buf, &l)
            .expect("frames")
            .expect("complete");
        assert!(!raw.data_digest_ok, "corruption at {at} not detected");
        let next = decode_frame(&mut buf, &l)
            .expect("frames")
            .expect("complete");
        assert!(next.data_digest_ok);
        assert_eq!(Pdu::decode(&next), Ok(nop_out(b"next")));
    }
    // Without corruption the digest checks out.
    let raw = frame_one(&wire, &limits(8192, true, true))
        .expect("frames")
        .expect("complete");
    assert!(raw.data_digest_ok);
}

proptest! {
    /// Any single-bit flip in the BHS outside the length fields is caught by
    /// the header digest.
    #[test]
    fn any_bhs_bit_flip_fails_the_header_digest(
        at in prop_oneof![0usize..4, 8usize..48],
        bit in 0u8..8,
    ) {
        let mut wire = nop_out(b"payload").to_vec(Digests { header: true, data: false });
        wire[at] ^= 1 << bit;
        let got = frame_one(&wire, &limits(8192, true, false));
        prop_assert!(matches!(got, Err(FrameError::HeaderDigest { .. })), "{:?}", got);
    }
}

// ---------------------------------------------------------------- AHS

/// A SCSI Command header with TotalAHSLength `words`, followed by `ahs`.
fn with_ahs(words: u8, ahs: &[u8]) -> Vec<u8> {
    let pdu = Pdu::new(Bhs::ScsiCommand(scsi_command()), Bytes::new());
    let mut wire = pdu.to_vec(NO_DIGESTS);
    wire[4] = words;
    wire.extend_from_slice(ahs);
    wire
}

fn decode_bytes(wire: &[u8]) -> Result<Pdu, PduError> {
    let raw = frame_one(wire, &limits(8192, false, false))
        .expect("frames")
        .expect("complete");
    Pdu::decode(&raw)
}

#[test]
fn extended_cdb_ahs_as_rfc_7143_lays_it_out() {
    // A 32-byte CDB: 16 bytes in the BHS, 16 in the AHS. AHSLength counts the
    // reserved byte: 17 (RFC 7143 §11.2.2.2, §11.2.2.3). 2+1+17 = 20 bytes.
    let mut ahs = vec![0x00, 17, 0x01, 0x00];
    ahs.extend((0..16).map(|i| 0xc0 + i));
    let wire = with_ahs(5, &ahs);
    let pdu = decode_bytes(&wire).expect("RFC layout decodes");
    assert_eq!(pdu.ahs.len(), 1);
    assert_eq!(pdu.ahs[0].ahs_type, Ahs::EXTENDED_CDB);
    assert_eq!(&pdu.ahs[0].data[..], &ahs[4..]);
    assert_eq!(pdu.to_vec(NO_DIGESTS), wire, "re-encodes to the same bytes");
}

#[test]
fn bidi_read_length_ahs_as_rfc_7143_lays_it_out() {
    // AHSLength 5: reserved byte + 4-byte length (RFC 7143 §11.2.2.4).
    let ahs = [0x00, 5, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00];
    let wire = with_ahs(2, &ahs);
    let pdu = decode_bytes(&wire).expect("RFC layout decodes");
    assert_eq!(pdu.ahs[0].ahs_type, Ahs::BIDI_READ_LENGTH);
    assert_eq!(&pdu.ahs[0].data[..], &[0x00, 0x01, 0x00, 0x00]);
    assert_eq!(pdu.to_vec(NO_DIGESTS), wire);
}

#[test]
fn malformed_ahs_lengths_are_bad_ahs() {
    // AHSLength runs past TotalAHSLength.
    let cases: &[(u8, &[u8])] = &[
        (1, &[0x00, 0x05, 0x01, 0x00]),
        (1, &[0x00, 0x02, 0x01, 0x00]),
        (2, &[0x00, 0x06, 0x01, 0x00, 1, 2, 3, 4]),
        (1, &[0xff, 0xff, 0x01, 0x00]),
        // Two AHSs, the second one too long.
        (
            3,
            &[0x00, 0x01, 0x01, 0x00, 0x00, 0x09, 0x02, 0x00, 0, 0, 0, 0],
        ),
    ];
    for (words, ahs) in cases {
        assert!(
            matches!(
                decode_bytes(&with_ahs(*words, ahs)),
                Err(PduError::BadAhs(_))
            ),
            "{ahs:02x?}"
        );
    }
    // AHSLength 0 leaves no room for the AHS-specific byte.
    assert!(matches!(
        decode_bytes(&with_ahs(1, &[0, 0, 1, 0])),
        Err(PduError::BadAhs(_))
    ));
    // An AHS area shorter than an AHS header (only reachable directly).
    assert!(matches!(Ahs::parse_all(&[0, 1]), Err(PduError::BadAhs(_))));
    assert_eq!(Ahs::parse_all(&[]), Ok(vec![]));
}

// ---------------------------------------------------------------- misc

#[test]
fn data_in_residual_bits_decode_as_sent() {
    // O and U both set is contradictory; the decoder keeps Overflow, and the
    // count is preserved either way.
    let mut h = header(0x25, 0);
    h[1] = 0x80 | 0x04 | 0x02 | 0x01;
    h[44..48].copy_from_slice(&77u32.to_be_bytes());
    let raw = frame_one(&h, &limits(8192, false, false))
        .expect("frames")
        .expect("complete");
    let Ok(Pdu {
        bhs: Bhs::DataIn(DataIn {
            residual, status, ..
        }),
        ..
    }) = Pdu::decode(&raw)
    else {
        panic!("not a Data-In")
    };
    assert_eq!(residual, Residual::Overflow(77));
    assert_eq!(status, Some(0));
}

#[test]
fn opcode_helpers_agree_with_decoding() {
    for op in 0u8..64 {
        assert_eq!(
            Opcode(op).is_initiator(),
            matches!(op, 0x00..=0x06 | 0x10),
            "{op:#04x}"
        );
    }
}

// ---------------------------------------------------------------- no panics

/// Runs the framer and decoder over `stream` until it needs more bytes or
/// fails; returns how many PDUs came out. Must never panic.
fn drain(stream: &[u8], l: &FrameLimits) -> usize {
    let mut buf = BytesMut::from(stream);
    let mut n = 0;
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, l) {
            Ok(Some(raw)) => {
                assert!(buf.len() < before);
                let _ = Pdu::decode(&raw);
                n += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return n;
            }
            Err(_) => return n,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the framer or the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(
        stream in vec(any::<u8>(), 0..4096),
        max in prop_oneof![Just(0u32), Just(512), Just(8192), Just(0xff_ffff)],
        hd in any::<bool>(),
        dd in any::<bool>(),
    ) {
        drain(&stream, &limits(max, hd, dd));
    }

    /// Random headers with small lengths, so that frames complete and the
    /// typed decoders and the AHS parser see arbitrary contents.
    #[test]
    fn arbitrary_small_pdus_never_panic(
        pdus in vec((any::<[u8; 48]>(), 0u8..8, 0u32..64, vec(any::<u8>(), 0..400)), 1..6),
        hd in any::<bool>(),
        dd in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for (mut h, words, dlen, tail) in pdus {
            h[4] = words;
            h[5..8].copy_from_slice(&dlen.to_be_bytes()[1..]);
            stream.extend_from_slice(&h);
            stream.extend_from_slice(&tail);
        }
        let n = drain(&stream, &limits(8192, hd, dd));
        prop_assert!(n <= 6);
    }
}
