//! Error paths of the replication codec: "need more bytes" is `Ok(None)`
//! and consumes nothing; an oversized length is refused on the header
//! alone, before the buffer grows; unknown opcodes are kept; malformed
//! bodies are typed errors, never panics; write data is not copied.

use bytes::{BufMut, Bytes, BytesMut};
use drbd_like_sync::proto::{
    decode, encode, ErrorCode, ErrorReply, Generation, ImageName, Limits, Message, Op, Opcode,
    ProtoError, Request, RequestId, Response, HEADER_LEN, MAX_TEXT_LEN,
};

fn write_req(data: &'static [u8]) -> Message {
    Message::Request(Request {
        id: RequestId(42),
        image: ImageName::new("vm-disk.0").unwrap(),
        generation: Generation(7),
        op: Op::Write {
            offset: 8192,
            data: Bytes::from_static(data),
            fua: false,
        },
    })
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(msg, &mut b);
    b.to_vec()
}

/// A raw frame: header for `body` with `opcode`.
fn raw(opcode: u16, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(body.len() as u32);
    b.put_u16(opcode);
    b.put_slice(body);
    b
}

#[test]
fn every_truncation_is_need_more_and_consumes_nothing() {
    let wire = frame(&write_req(b"some data"));
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert!(
            decode(&mut buf, &Limits::default()).unwrap().is_none(),
            "prefix of {cut} bytes"
        );
        assert_eq!(&buf[..], &wire[..cut], "Ok(None) changed the buffer");
    }
}

#[test]
fn oversized_length_is_refused_before_the_buffer_grows() {
    let limits = Limits { max_body_len: 1024 };
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32(1025);
    buf.put_u16(Opcode::WRITE.0);
    let cap = buf.capacity();
    let err = decode(&mut buf, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::FrameTooLong {
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert_eq!(
        buf.capacity(),
        cap,
        "the decoder reserved memory for a refused frame"
    );
    assert_eq!(
        buf.len(),
        HEADER_LEN,
        "the decoder consumed a refused header"
    );

    // 4 GiB announced against the default limit: same, no allocation.
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32(u32::MAX);
    buf.put_u16(Opcode::OK.0);
    let cap = buf.capacity();
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::FrameTooLong { len: u32::MAX, .. })
    ));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn a_frame_at_the_limit_is_accepted() {
    let msg = write_req(&[0xab; 64]);
    let wire = frame(&msg);
    let limits = Limits {
        max_body_len: (wire.len() - HEADER_LEN) as u32,
    };
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(decode(&mut buf, &limits).unwrap(), Some(msg));
}

#[test]
fn unknown_opcode_is_kept_with_its_request_id() {
    let mut body = 99u64.to_be_bytes().to_vec();
    body.extend_from_slice(b"future fields");
    let mut buf = raw(0x01f0, &body);
    let wire = buf.to_vec();
    let msg = decode(&mut buf, &Limits::default()).unwrap().unwrap();
    let Message::Unknown(u) = &msg else {
        panic!("unknown opcode not kept: {msg:?}")
    };
    assert_eq!(u.opcode, Opcode(0x01f0));
    assert_eq!(&u.body[..], &body[..]);
    assert_eq!(
        u.request_id(),
        Some(RequestId(99)),
        "a server can answer Unsupported"
    );
    assert_eq!(frame(&msg), wire, "an unknown frame re-encodes as received");
    // Outside the request range there is no request id to answer.
    let mut buf = raw(0x7777, &body);
    let Some(Message::Unknown(u)) = decode(&mut buf, &Limits::default()).unwrap() else {
        panic!("not kept")
    };
    assert_eq!(u.request_id(), None);
}

#[test]
fn unknown_error_code_is_kept() {
    let msg = Message::Response(Response::Error(ErrorReply::new(
        RequestId(1),
        ErrorCode(0x00ee),
        "new",
    )));
    let mut buf = BytesMut::from(&frame(&msg)[..]);
    assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), Some(msg));
    assert_eq!(ErrorCode(0x00ee).name(), None);
}

#[test]
fn short_body_is_truncated_and_long_body_has_trailing_bytes() {
    // A Read whose body lacks its len field.
    let wire = frame(&Message::Request(Request {
        id: RequestId(1),
        image: ImageName::new("a").unwrap(),
        generation: Generation(1),
        op: Op::Read { offset: 0, len: 1 },
    }));
    let body = &wire[HEADER_LEN..];
    let mut buf = raw(Opcode::READ.0, &body[..body.len() - 1]);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::Truncated {
            opcode: Opcode::READ
        })
    ));
    let mut long = body.to_vec();
    long.push(0);
    let mut buf = raw(Opcode::READ.0, &long);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::TrailingBytes {
            opcode: Opcode::READ,
            extra: 1
        })
    ));
    // Accept carries nothing.
    let mut buf = raw(Opcode::ACCEPT.0, b"x");
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::TrailingBytes { .. })
    ));
}

#[test]
fn checksum_count_beyond_the_body_is_refused_before_sizing_the_vec() {
    let mut body = Vec::new();
    body.extend(1u64.to_be_bytes()); // request id
    body.extend(4096u32.to_be_bytes()); // chunk
    body.extend(u32::MAX.to_be_bytes()); // count: 32 GiB of sums
    body.extend(0u64.to_be_bytes()); // one sum
    let mut buf = raw(Opcode::CHECKSUMS.0, &body);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::Truncated {
            opcode: Opcode::CHECKSUMS
        })
    ));
}

#[test]
fn reserved_write_flags_invalid_names_and_long_text_are_refused() {
    let mut wire = frame(&write_req(b"x"));
    // Flags byte: header, id 8, name 1+9, generation 8, offset 8.
    let flags_at = HEADER_LEN + 8 + 10 + 8 + 8;
    wire[flags_at] = 0x82;
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::BadFlags { flags: 0x82, .. })
    ));

    let mut wire = frame(&write_req(b"x"));
    wire[HEADER_LEN + 8 + 1] = b'/'; // "/m-disk.0" is not an image name
    let mut buf = BytesMut::from(&wire[..]);
    let err = decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::BadName {
                what: "image name",
                ..
            }
        ),
        "{err}"
    );

    let mut body = Vec::new();
    body.extend(0x0100u16.to_be_bytes());
    body.extend(1u16.to_be_bytes());
    body.extend(((MAX_TEXT_LEN + 1) as u16).to_be_bytes());
    body.extend(vec![b'a'; MAX_TEXT_LEN + 1]);
    let mut buf = raw(Opcode::FATAL.0, &body);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::BadText {
            why: "too long",
            ..
        })
    ));
    let mut buf = raw(Opcode::FATAL.0, &[0, 1, 0, 1, 0, 2, 0xff, 0xfe]);
    assert!(matches!(
        decode(&mut buf, &Limits::default()),
        Err(ProtoError::BadText {
            why: "not UTF-8",
            ..
        })
    ));
}

#[test]
fn long_messages_are_cut_at_a_char_boundary_on_encode() {
    let long = "é".repeat(MAX_TEXT_LEN); // 2 bytes each
    let msg = Message::Response(Response::Error(ErrorReply::new(
        RequestId(1),
        ErrorCode::IO,
        long,
    )));
    let mut buf = BytesMut::from(&frame(&msg)[..]);
    let Some(Message::Response(Response::Error(e))) = decode(&mut buf, &Limits::default()).unwrap()
    else {
        panic!("did not decode")
    };
    assert_eq!(e.message.len(), MAX_TEXT_LEN);
    assert!(e.message.chars().all(|c| c == 'é'));
}

#[test]
fn write_data_shares_the_receive_buffer() {
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&frame(&write_req(&[7; 1000])));
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Message::Request(Request {
        op: Op::Write { data, .. },
        ..
    })) = decode(&mut buf, &Limits::default()).unwrap()
    else {
        panic!("not a write")
    };
    assert_eq!(data.len(), 1000);
    assert!(
        range.contains(&(data.as_ptr() as usize)),
        "write data was copied"
    );
}

#[test]
fn pipelined_frames_decode_one_at_a_time() {
    let a = write_req(b"first");
    let b = Message::Ping(RequestId(2));
    let c = Message::Response(Response::StreamHole {
        id: RequestId(3),
        offset: 1 << 40,
        len: 4 << 20,
    });
    let mut buf = BytesMut::new();
    for m in [&a, &b, &c] {
        encode(m, &mut buf);
    }
    buf.extend_from_slice(&frame(&a)[..5]); // and a partial fourth
    for m in [a, b, c] {
        assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), Some(m));
    }
    assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), None);
    assert_eq!(buf.len(), 5);
}
