//! Typed messages and their body layouts (the byte tables are in the
//! module doc of `proto`). Decoding is strict: every field is checked, the
//! body must be consumed exactly, and unknown opcodes are kept whole.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{put_name, put_text, Opcode, Reader};
use super::{
    ErrorCode, Generation, ImageName, NodeId, Nonce, ProtoError, RequestId, Tag, MAGIC,
    PROTOCOL_VERSION,
};

/// Bit 0 of a `Write`'s flags: Force Unit Access.
const FLAG_FUA: u8 = 0x01;

/// One frame, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first message on a connection.
    ClientHello(ClientHello),
    /// Server → client, answer to the hello.
    ServerHello(ServerHello),
    /// Client → server, the client's proof.
    ClientProof(ClientProof),
    /// Server → client: authenticated; requests may follow.
    Accept,
    /// Either way: a connection fault; the sender closes after it.
    Fatal(Fatal),
    /// Client → server liveness probe; answered with [`Response::Ok`].
    Ping(RequestId),
    /// Client → server: an operation on an image copy.
    Request(Request),
    /// Server → client: the outcome of a request.
    Response(Response),
    /// A frame whose opcode this build does not know, kept whole.
    Unknown(UnknownFrame),
}

/// The client's hello (frozen layout). The magic is checked by the decoder
/// and not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The client's node id.
    pub node_id: NodeId,
    /// The client's challenge to the server.
    pub nonce: Nonce,
}

/// The server's hello (frozen layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The protocol version the server speaks.
    pub version: u16,
    /// The server's node id.
    pub node_id: NodeId,
    /// The server's challenge to the client.
    pub nonce: Nonce,
    /// HMAC proving the server knows the secret (see `handshake`).
    pub proof: Tag,
}

/// The client's answer to the server's challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientProof {
    /// HMAC proving the client knows the secret (see `handshake`).
    pub proof: Tag,
}

/// A connection fault (frozen layout): decodable by every version, so a
/// peer of another version still learns why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    /// What went wrong (codes from 0x0100).
    pub code: ErrorCode,
    /// The sender's [`PROTOCOL_VERSION`], so a version mismatch names both.
    pub version: u16,
    /// For an operator; at most [`MAX_TEXT_LEN`](super::MAX_TEXT_LEN) bytes.
    pub message: String,
}

impl Fatal {
    /// The frame that tells the peer about `err`, with our version.
    pub fn for_error(err: &ProtoError) -> Fatal {
        Fatal {
            code: err.wire_code(),
            version: PROTOCOL_VERSION,
            message: err.to_string(),
        }
    }
}

/// A request on one image copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed in every response to this request.
    pub id: RequestId,
    /// The image whose copy is addressed.
    pub image: ImageName,
    /// The writer's generation; older than the copy has seen → `Fenced`.
    pub generation: Generation,
    /// What to do.
    pub op: Op,
}

/// The operations. Offsets and lengths are bytes of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes; answered by `Ok` with the data.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes to read; the server refuses more than fits a frame.
        len: u32,
    },
    /// Write `data`; with `fua`, stable on the copy's disk before `Ok`.
    Write {
        /// First byte.
        offset: u64,
        /// The bytes to write (shares the receive buffer when decoded).
        data: Bytes,
        /// Force Unit Access.
        fua: bool,
    },
    /// Make every acknowledged write stable; answered by `Ok`.
    Flush,
    /// Write zeroes over the range.
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Bytes to zero.
        len: u64,
    },
    /// Deallocate the range; it reads as zeroes afterwards.
    Discard {
        /// First byte.
        offset: u64,
        /// Bytes to discard.
        len: u64,
    },
    /// Checksum the range in chunks of `chunk` bytes (the last may be
    /// short); answered by `Checksums` with [`chunk_checksum`](super::chunk_checksum)s.
    Checksum {
        /// First byte.
        offset: u64,
        /// Bytes to cover.
        len: u64,
        /// Chunk size in bytes; 0 is refused with `OutOfRange`.
        chunk: u32,
    },
    /// Stream the range for resync: `StreamChunk`s and `StreamHole`s in
    /// order, then `StreamEnd`.
    StreamRange {
        /// First byte.
        offset: u64,
        /// Bytes to stream.
        len: u64,
    },
}

/// A server's answer to one request; several for `StreamRange`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Success; `data` holds what a `Read` asked for, else it is empty.
    Ok {
        /// The request answered.
        id: RequestId,
        /// Read data (shares the receive buffer when decoded).
        data: Bytes,
    },
    /// Per-chunk checksums of a `Checksum` request.
    Checksums {
        /// The request answered.
        id: RequestId,
        /// The chunk size used, in bytes.
        chunk: u32,
        /// One [`chunk_checksum`](super::chunk_checksum) per chunk, in order.
        sums: Vec<u64>,
    },
    /// Data of a stream.
    StreamChunk {
        /// The request answered.
        id: RequestId,
        /// Image offset of `data`'s first byte.
        offset: u64,
        /// The bytes (shares the receive buffer when decoded).
        data: Bytes,
    },
    /// An unallocated range of a stream: reads as zeroes.
    StreamHole {
        /// The request answered.
        id: RequestId,
        /// First byte of the hole.
        offset: u64,
        /// Length of the hole in bytes.
        len: u64,
    },
    /// The stream covered its whole range.
    StreamEnd {
        /// The request answered.
        id: RequestId,
    },
    /// The request failed; for a stream, this ends it.
    Error(ErrorReply),
}

/// A failed request, with a stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request answered.
    pub id: RequestId,
    /// What failed ([`ErrorCode`]; unknown codes are kept).
    pub code: ErrorCode,
    /// For `FENCED`, the newest generation the copy has seen; 0 otherwise.
    pub detail: u64,
    /// For an operator; at most [`MAX_TEXT_LEN`](super::MAX_TEXT_LEN) bytes.
    pub message: String,
}

impl ErrorReply {
    /// A `Fenced` answer: the request's generation is older than `seen`.
    pub fn fenced(id: RequestId, seen: Generation, message: impl Into<String>) -> Self {
        ErrorReply {
            id,
            code: ErrorCode::FENCED,
            detail: seen.0,
            message: message.into(),
        }
    }

    /// An answer with `code` and no detail.
    pub fn new(id: RequestId, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            id,
            code,
            detail: 0,
            message: message.into(),
        }
    }

    /// The generation a `Fenced` answer reports, `None` for other codes.
    pub fn seen_generation(&self) -> Option<Generation> {
        (self.code == ErrorCode::FENCED).then_some(Generation(self.detail))
    }
}

/// A frame of an opcode this build does not know. Built by the decoder;
/// one built by hand with a known opcode would decode as that opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownFrame {
    /// Its opcode.
    pub opcode: Opcode,
    /// Its body, untouched.
    pub body: Bytes,
}

impl UnknownFrame {
    /// The request id of an unknown request (opcodes 0x01xx start with
    /// one), so the server can answer `Unsupported` to it.
    pub fn request_id(&self) -> Option<RequestId> {
        let id: [u8; 8] = self.body.get(..8)?.try_into().ok()?;
        (self.opcode.0 >> 8 == 0x01).then_some(RequestId(u64::from_be_bytes(id)))
    }
}

impl Message {
    /// The opcode this message is framed with.
    pub fn opcode(&self) -> Opcode {
        match self {
            Message::ClientHello(_) => Opcode::CLIENT_HELLO,
            Message::ServerHello(_) => Opcode::SERVER_HELLO,
            Message::ClientProof(_) => Opcode::CLIENT_PROOF,
            Message::Accept => Opcode::ACCEPT,
            Message::Fatal(_) => Opcode::FATAL,
            Message::Ping(_) => Opcode::PING,
            Message::Request(r) => match r.op {
                Op::Read { .. } => Opcode::READ,
                Op::Write { .. } => Opcode::WRITE,
                Op::Flush => Opcode::FLUSH,
                Op::WriteZeroes { .. } => Opcode::WRITE_ZEROES,
                Op::Discard { .. } => Opcode::DISCARD,
                Op::Checksum { .. } => Opcode::CHECKSUM,
                Op::StreamRange { .. } => Opcode::STREAM_RANGE,
            },
            Message::Response(r) => match r {
                Response::Ok { .. } => Opcode::OK,
                Response::Checksums { .. } => Opcode::CHECKSUMS,
                Response::StreamChunk { .. } => Opcode::STREAM_CHUNK,
                Response::StreamHole { .. } => Opcode::STREAM_HOLE,
                Response::StreamEnd { .. } => Opcode::STREAM_END,
                Response::Error(_) => Opcode::ERROR,
            },
            Message::Unknown(u) => u.opcode,
        }
    }

    /// The message's name for logs and errors.
    pub fn name(&self) -> &'static str {
        self.opcode().name().unwrap_or("unknown frame")
    }

    /// Decodes one body; `body` is the frame without its header.
    pub(super) fn decode_body(opcode: Opcode, body: Bytes) -> Result<Message, ProtoError> {
        let mut r = Reader::new(opcode, body);
        let msg = match opcode {
            Opcode::CLIENT_HELLO => {
                let (version, node_id) = hello_prefix(&mut r)?;
                Message::ClientHello(ClientHello {
                    version,
                    node_id,
                    nonce: Nonce(r.array()?),
                })
            }
            Opcode::SERVER_HELLO => {
                let (version, node_id) = hello_prefix(&mut r)?;
                Message::ServerHello(ServerHello {
                    version,
                    node_id,
                    nonce: Nonce(r.array()?),
                    proof: Tag(r.array()?),
                })
            }
            Opcode::CLIENT_PROOF => Message::ClientProof(ClientProof {
                proof: Tag(r.array()?),
            }),
            Opcode::ACCEPT => Message::Accept,
            Opcode::FATAL => Message::Fatal(Fatal {
                code: ErrorCode(r.u16()?),
                version: r.u16()?,
                message: r.text()?,
            }),
            Opcode::PING => Message::Ping(RequestId(r.u64()?)),
            Opcode::READ
            | Opcode::WRITE
            | Opcode::FLUSH
            | Opcode::WRITE_ZEROES
            | Opcode::DISCARD
            | Opcode::CHECKSUM
            | Opcode::STREAM_RANGE => Message::Request(decode_request(&mut r)?),
            Opcode::OK
            | Opcode::CHECKSUMS
            | Opcode::STREAM_CHUNK
            | Opcode::STREAM_HOLE
            | Opcode::STREAM_END
            | Opcode::ERROR => Message::Response(decode_response(&mut r)?),
            _ => Message::Unknown(UnknownFrame {
                opcode,
                body: r.rest(),
            }),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Appends the body (the frame header is written by `encode`).
    pub(super) fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Message::ClientHello(h) => {
                put_hello_prefix(out, h.version, &h.node_id);
                out.put_slice(&h.nonce.0);
            }
            Message::ServerHello(h) => {
                put_hello_prefix(out, h.version, &h.node_id);
                out.put_slice(&h.nonce.0);
                out.put_slice(&h.proof.0);
            }
            Message::ClientProof(p) => out.put_slice(&p.proof.0),
            Message::Accept => {}
            Message::Fatal(f) => {
                out.put_u16(f.code.0);
                out.put_u16(f.version);
                put_text(out, &f.message);
            }
            Message::Ping(id) => out.put_u64(id.0),
            Message::Request(r) => encode_request(r, out),
            Message::Response(r) => encode_response(r, out),
            Message::Unknown(u) => out.put_slice(&u.body),
        }
    }
}

/// Magic, version and node id: the frozen start of both hellos.
fn hello_prefix(r: &mut Reader) -> Result<(u16, NodeId), ProtoError> {
    let found: [u8; 8] = r.array()?;
    if found != MAGIC {
        return Err(ProtoError::BadMagic { found });
    }
    let version = r.u16()?;
    let opcode = r.opcode();
    let node_id = NodeId::new(r.name()?).map_err(|e| ProtoError::BadName {
        what: "node id",
        opcode,
        source: Box::new(e),
    })?;
    Ok((version, node_id))
}

fn put_hello_prefix(out: &mut BytesMut, version: u16, node_id: &NodeId) {
    out.put_slice(&MAGIC);
    out.put_u16(version);
    put_name(out, node_id.as_str());
}

fn decode_request(r: &mut Reader) -> Result<Request, ProtoError> {
    let opcode = r.opcode();
    let id = RequestId(r.u64()?);
    let image = ImageName::new(r.name()?).map_err(|e| ProtoError::BadName {
        what: "image name",
        opcode,
        source: Box::new(e),
    })?;
    let generation = Generation(r.u64()?);
    let op = match opcode {
        Opcode::READ => Op::Read {
            offset: r.u64()?,
            len: r.u32()?,
        },
        Opcode::WRITE => {
            let offset = r.u64()?;
            let flags = r.u8()?;
            if flags & !FLAG_FUA != 0 {
                return Err(ProtoError::BadFlags { opcode, flags });
            }
            Op::Write {
                offset,
                fua: flags & FLAG_FUA != 0,
                data: r.rest(),
            }
        }
        Opcode::FLUSH => Op::Flush,
        Opcode::WRITE_ZEROES => Op::WriteZeroes {
            offset: r.u64()?,
            len: r.u64()?,
        },
        Opcode::DISCARD => Op::Discard {
            offset: r.u64()?,
            len: r.u64()?,
        },
        Opcode::CHECKSUM => Op::Checksum {
            offset: r.u64()?,
            len: r.u64()?,
            chunk: r.u32()?,
        },
        // The caller dispatches only request opcodes here.
        _ => Op::StreamRange {
            offset: r.u64()?,
            len: r.u64()?,
        },
    };
    Ok(Request {
        id,
        image,
        generation,
        op,
    })
}

fn encode_request(req: &Request, out: &mut BytesMut) {
    out.put_u64(req.id.0);
    put_name(out, req.image.as_str());
    out.put_u64(req.generation.0);
    match &req.op {
        Op::Read { offset, len } => {
            out.put_u64(*offset);
            out.put_u32(*len);
        }
        Op::Write { offset, data, fua } => {
            out.put_u64(*offset);
            out.put_u8(if *fua { FLAG_FUA } else { 0 });
            out.put_slice(data);
        }
        Op::Flush => {}
        Op::WriteZeroes { offset, len }
        | Op::Discard { offset, len }
        | Op::StreamRange { offset, len } => {
            out.put_u64(*offset);
            out.put_u64(*len);
        }
        Op::Checksum { offset, len, chunk } => {
            out.put_u64(*offset);
            out.put_u64(*len);
            out.put_u32(*chunk);
        }
    }
}

fn decode_response(r: &mut Reader) -> Result<Response, ProtoError> {
    let id = RequestId(r.u64()?);
    Ok(match r.opcode() {
        Opcode::OK => Response::Ok { id, data: r.rest() },
        Opcode::CHECKSUMS => {
            let chunk = r.u32()?;
            let count = r.u32()? as usize;
            // Size the Vec only once the body is known to hold every sum:
            // the frame limit then bounds the allocation.
            if !count.checked_mul(8).is_some_and(|n| r.has(n)) {
                return Err(ProtoError::Truncated { opcode: r.opcode() });
            }
            let mut sums = Vec::with_capacity(count);
            for _ in 0..count {
                sums.push(r.u64()?);
            }
            Response::Checksums { id, chunk, sums }
        }
        Opcode::STREAM_CHUNK => Response::StreamChunk {
            id,
            offset: r.u64()?,
            data: r.rest(),
        },
        Opcode::STREAM_HOLE => Response::StreamHole {
            id,
            offset: r.u64()?,
            len: r.u64()?,
        },
        Opcode::STREAM_END => Response::StreamEnd { id },
        // The caller dispatches only response opcodes here.
        _ => Response::Error(ErrorReply {
            id,
            code: ErrorCode(r.u16()?),
            detail: r.u64()?,
            message: r.text()?,
        }),
    })
}

fn encode_response(resp: &Response, out: &mut BytesMut) {
    match resp {
        Response::Ok { id, data } => {
            out.put_u64(id.0);
            out.put_slice(data);
        }
        Response::Checksums { id, chunk, sums } => {
            out.put_u64(id.0);
            out.put_u32(*chunk);
            // A u32 count bounds a Checksums frame to 32 GiB of sums, far
            // above any frame limit; the caller splits long lists.
            out.put_u32(sums.len() as u32);
            for s in sums {
                out.put_u64(*s);
            }
        }
        Response::StreamChunk { id, offset, data } => {
            out.put_u64(id.0);
            out.put_u64(*offset);
            out.put_slice(data);
        }
        Response::StreamHole { id, offset, len } => {
            out.put_u64(id.0);
            out.put_u64(*offset);
            out.put_u64(*len);
        }
        Response::StreamEnd { id } => out.put_u64(id.0),
        Response::Error(e) => {
            out.put_u64(e.id.0);
            out.put_u16(e.code.0);
            out.put_u64(e.detail);
            put_text(out, &e.message);
        }
    }
}
