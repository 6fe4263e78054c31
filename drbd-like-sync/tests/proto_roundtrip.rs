//! Property tests of the replication codec: every message type, with
//! arbitrary field values and payloads, survives encode -> decode; the
//! decoder needs exactly the encoded bytes (every shorter prefix is "need
//! more" and consumes nothing); and frames decode the same however the
//! stream is cut into reads.

use bytes::{Bytes, BytesMut};
use drbd_like_sync::proto::{
    decode, encode, ClientHello, ClientProof, ErrorCode, ErrorReply, Fatal, Generation, ImageName,
    Limits, Message, NodeId, Nonce, Op, Opcode, Request, RequestId, Response, ServerHello, Tag,
    UnknownFrame,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn name_chars() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}
fn image() -> impl Strategy<Value = ImageName> {
    "[A-Za-z0-9._-]{1,128}".prop_map(|s| ImageName::new(s).unwrap())
}
fn node() -> impl Strategy<Value = NodeId> {
    name_chars().prop_map(|s| NodeId::new(s).unwrap())
}
fn id() -> impl Strategy<Value = RequestId> {
    any::<u64>().prop_map(RequestId)
}
fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}
/// Messages within `MAX_TEXT_LEN` bytes (longer ones are cut on encode).
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,200}"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Op::Read { offset, len }),
        (any::<u64>(), data(), any::<bool>()).prop_map(|(offset, data, fua)| Op::Write {
            offset,
            data,
            fua
        }),
        Just(Op::Flush),
        (any::<u64>(), any::<u64>()).prop_map(|(offset, len)| Op::WriteZeroes { offset, len }),
        (any::<u64>(), any::<u64>()).prop_map(|(offset, len)| Op::Discard { offset, len }),
        (any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(offset, len, chunk)| { Op::Checksum { offset, len, chunk } }),
        (any::<u64>(), any::<u64>()).prop_map(|(offset, len)| Op::StreamRange { offset, len }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (id(), data()).prop_map(|(id, data)| Response::Ok { id, data }),
        (id(), any::<u32>(), vec(any::<u64>(), 0..300))
            .prop_map(|(id, chunk, sums)| Response::Checksums { id, chunk, sums }),
        (id(), any::<u64>(), data()).prop_map(|(id, offset, data)| Response::StreamChunk {
            id,
            offset,
            data
        }),
        (id(), any::<u64>(), any::<u64>()).prop_map(|(id, offset, len)| Response::StreamHole {
            id,
            offset,
            len
        }),
        id().prop_map(|id| Response::StreamEnd { id }),
        (id(), any::<u16>(), any::<u64>(), text()).prop_map(|(id, code, detail, message)| {
            Response::Error(ErrorReply {
                id,
                code: ErrorCode(code),
                detail,
                message,
            })
        }),
    ]
}

/// Opcodes this build does not know.
fn unknown_opcode() -> impl Strategy<Value = Opcode> {
    any::<u16>()
        .prop_map(Opcode)
        .prop_filter("known opcode", |o| o.name().is_none())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), node(), any::<[u8; 32]>()).prop_map(|(version, node_id, n)| {
            Message::ClientHello(ClientHello {
                version,
                node_id,
                nonce: Nonce(n),
            })
        }),
        (any::<u16>(), node(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(version, node_id, n, p)| Message::ServerHello(ServerHello {
                version,
                node_id,
                nonce: Nonce(n),
                proof: Tag(p),
            })
        ),
        any::<[u8; 32]>().prop_map(|p| Message::ClientProof(ClientProof { proof: Tag(p) })),
        Just(Message::Accept),
        (any::<u16>(), any::<u16>(), text()).prop_map(|(code, version, message)| {
            Message::Fatal(Fatal {
                code: ErrorCode(code),
                version,
                message,
            })
        }),
        id().prop_map(Message::Ping),
        (id(), image(), any::<u64>(), op()).prop_map(|(id, image, g, op)| {
            Message::Request(Request {
                id,
                image,
                generation: Generation(g),
                op,
            })
        }),
        response().prop_map(Message::Response),
        (unknown_opcode(), data())
            .prop_map(|(opcode, body)| Message::Unknown(UnknownFrame { opcode, body })),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let mut wire = BytesMut::new();
        encode(&msg, &mut wire);
        let full = wire.clone();
        let back = decode(&mut wire, &Limits::default()).unwrap();
        prop_assert_eq!(back.as_ref(), Some(&msg));
        prop_assert!(wire.is_empty(), "frame not fully consumed");
        // Re-encoding the decoded message gives the same bytes.
        let mut again = BytesMut::new();
        encode(&back.unwrap(), &mut again);
        prop_assert_eq!(&again[..], &full[..]);
    }

    #[test]
    fn decoder_needs_exactly_the_encoded_bytes(msg in message(), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        encode(&msg, &mut wire);
        let n = cut.index(wire.len());
        let mut short = BytesMut::from(&wire[..n]);
        prop_assert!(decode(&mut short, &Limits::default()).unwrap().is_none());
        prop_assert_eq!(&short[..], &wire[..n]);
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_cut(
        msgs in vec(message(), 1..6),
        chunk in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode(m, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(m) = decode(&mut buf, &Limits::default()).unwrap() {
                got.push(m);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }
}
