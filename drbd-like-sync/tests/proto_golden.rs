//! Golden bytes for the replication protocol: each message below must
//! encode to exactly the bytes of the layout tables in `proto`'s module
//! doc, and those bytes must decode back to the message. A change here is
//! a wire-format change and needs a new `PROTOCOL_VERSION` (except for the
//! frozen hello and `Fatal` layouts, which must never change).

use bytes::{Bytes, BytesMut};
use drbd_like_sync::proto::{
    decode, encode, ClientHello, ErrorCode, ErrorReply, Fatal, Generation, ImageName, Limits,
    Message, NodeId, Nonce, Op, Request, RequestId, Response, HEADER_LEN, MAGIC,
};

/// Parses spaced hex ("00 01 ff") into bytes.
fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Checks encode(msg) == wire and decode(wire) == msg, consuming it all.
fn golden(msg: Message, wire: &[u8]) {
    let mut out = BytesMut::new();
    encode(&msg, &mut out);
    assert_eq!(&out[..], wire, "encoding of {msg:?}");
    let mut buf = BytesMut::from(wire);
    let back = decode(&mut buf, &Limits::default())
        .expect("golden bytes decode")
        .expect("golden bytes are a whole frame");
    assert!(buf.is_empty(), "golden frame not fully consumed");
    assert_eq!(back, msg);
}

fn image(s: &str) -> ImageName {
    ImageName::new(s).unwrap()
}

#[test]
fn client_hello_layout_is_frozen() {
    let mut wire = hex("00 00 00 2d  00 01"); // body_len 45, ClientHello
    wire.extend_from_slice(&MAGIC);
    wire.extend(hex("00 01  02 6e 31")); // version 1, node id "n1"
    wire.extend([0x11; 32]); // client nonce
    assert_eq!(wire.len(), HEADER_LEN + 45);
    assert_eq!(&wire[6..14], b"LOCUSRPL");
    golden(
        Message::ClientHello(ClientHello {
            version: 1,
            node_id: NodeId::new("n1").unwrap(),
            nonce: Nonce([0x11; 32]),
        }),
        &wire,
    );
}

#[test]
fn read_request_layout() {
    let wire = hex("00 00 00 20  01 01 \
         00 00 00 00 00 00 00 07 \
         03 76 6d 31 \
         00 00 00 00 00 00 00 03 \
         00 00 00 00 00 00 10 00 \
         00 00 02 00");
    golden(
        Message::Request(Request {
            id: RequestId(7),
            image: image("vm1"),
            generation: Generation(3),
            op: Op::Read {
                offset: 4096,
                len: 512,
            },
        }),
        &wire,
    );
}

#[test]
fn write_request_layout_with_fua() {
    let wire = hex("00 00 00 1d  01 02 \
         00 00 00 00 00 00 00 01 \
         01 61 \
         00 00 00 00 00 00 00 02 \
         00 00 00 00 00 00 02 00 \
         01 \
         68 69");
    golden(
        Message::Request(Request {
            id: RequestId(1),
            image: image("a"),
            generation: Generation(2),
            op: Op::Write {
                offset: 0x200,
                data: Bytes::from_static(b"hi"),
                fua: true,
            },
        }),
        &wire,
    );
}

#[test]
fn fenced_error_layout() {
    let wire = hex("00 00 00 17  02 05 \
         00 00 00 00 00 00 00 09 \
         00 01 \
         00 00 00 00 00 00 00 05 \
         00 03 6f 6c 64");
    let reply = ErrorReply::fenced(RequestId(9), Generation(5), "old");
    assert_eq!(reply.seen_generation(), Some(Generation(5)));
    golden(Message::Response(Response::Error(reply)), &wire);
}

#[test]
fn checksums_layout() {
    let wire = hex("00 00 00 20  02 01 \
         00 00 00 00 00 00 00 04 \
         00 01 00 00 \
         00 00 00 02 \
         01 02 03 04 05 06 07 08 \
         ff ff ff ff ff ff ff ff");
    golden(
        Message::Response(Response::Checksums {
            id: RequestId(4),
            chunk: 65536,
            sums: vec![0x0102_0304_0506_0708, u64::MAX],
        }),
        &wire,
    );
}

#[test]
fn fatal_layout_is_frozen() {
    // VERSION_MISMATCH from a version-1 sender, message "v".
    let wire = hex("00 00 00 07  00 05  01 01  00 01  00 01 76");
    golden(
        Message::Fatal(Fatal {
            code: ErrorCode::VERSION_MISMATCH,
            version: 1,
            message: "v".into(),
        }),
        &wire,
    );
}

#[test]
fn ping_and_accept_layouts() {
    golden(
        Message::Ping(RequestId(0x0102)),
        &hex("00 00 00 08  01 00  00 00 00 00 00 00 01 02"),
    );
    golden(Message::Accept, &hex("00 00 00 00  00 04"));
    golden(
        Message::Response(Response::StreamEnd { id: RequestId(3) }),
        &hex("00 00 00 08  02 04  00 00 00 00 00 00 00 03"),
    );
}

#[test]
fn chunk_checksum_is_sha256_truncated_to_64_bits() {
    // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 ...
    assert_eq!(
        drbd_like_sync::proto::chunk_checksum(b"abc"),
        0xba78_16bf_8f01_cfea
    );
}
