//! The handshake machines (invariant 8, ARCHITECTURE.md), driven over an
//! in-memory "wire" that encodes and decodes every message, as a real
//! connection would: a good secret authenticates both ways; a wrong secret
//! on either side, a wrong version, or a replayed, reflected or garbled
//! proof fails on both sides with the matching error, and a failed machine
//! accepts nothing more.

use bytes::BytesMut;
use drbd_like_sync::proto::{
    decode, encode, ClientHandshake, ClientHello, ClientProof, ClusterSecret, ErrorCode,
    HandshakeConfig, Limits, Message, NodeId, Nonce, ProtoError, ServerHandshake, ServerHello,
    Step, Tag, MAGIC, PROTOCOL_VERSION,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn cfg(id: &str, secret: &[u8]) -> HandshakeConfig {
    HandshakeConfig {
        node_id: NodeId::new(id).unwrap(),
        secret: ClusterSecret::new(secret),
    }
}

/// Sends `msg` through encode and decode, as over a socket.
fn wire(msg: &Message) -> Message {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf);
    let out = decode(&mut buf, &Limits::default()).unwrap().unwrap();
    assert!(buf.is_empty());
    out
}

/// The message a step asks to send (panics if it sends nothing).
fn sent(step: &Step) -> Message {
    match step {
        Step::Send(m) => m.clone(),
        Step::Done { send: Some(m), .. } | Step::Failed { send: Some(m), .. } => m.clone(),
        other => panic!("step sends nothing: {other:?}"),
    }
}

const N_C: Nonce = Nonce([0xc1; 32]);
const N_S: Nonce = Nonce([0x5e; 32]);

/// Runs client and server to the end; returns their last steps.
fn run(client: HandshakeConfig, server: HandshakeConfig) -> (Step, Step) {
    let (mut c, hello) = ClientHandshake::new(client, N_C);
    let mut s = ServerHandshake::new(server, N_S);
    let mut to_server = Some(wire(&hello));
    let (mut last_c, mut last_s) = (None, None);
    // At most two round trips; a side that finished stops stepping.
    while let Some(m) = to_server.take() {
        let step_s = s.step(&m);
        let reply = match &step_s {
            Step::Send(r) => Some(r.clone()),
            Step::Done { send, .. } | Step::Failed { send, .. } => send.clone(),
        };
        let s_over = !matches!(step_s, Step::Send(_));
        last_s = Some(step_s);
        let Some(reply) = reply else { break };
        let step_c = c.step(&wire(&reply));
        let next = match &step_c {
            Step::Send(r) => Some(r.clone()),
            Step::Failed { send, .. } if !s_over => send.clone(),
            _ => None,
        };
        last_c = Some(step_c);
        to_server = next.map(|m| wire(&m));
    }
    (
        last_c.expect("client stepped"),
        last_s.expect("server stepped"),
    )
}

fn assert_auth_failed(step: &Step) {
    assert!(
        matches!(
            step,
            Step::Failed {
                error: ProtoError::AuthFailed(_),
                ..
            }
        ),
        "expected AuthFailed, got {step:?}"
    );
}

#[test]
fn same_secret_authenticates_both_ways() {
    let (c, s) = run(
        cfg("writer", b"cluster-secret"),
        cfg("store1", b"cluster-secret"),
    );
    assert!(
        matches!(c, Step::Done { send: None, ref peer } if peer.as_str() == "store1"),
        "{c:?}"
    );
    assert!(
        matches!(s, Step::Done { send: Some(Message::Accept), ref peer } if peer.as_str() == "writer"),
        "{s:?}"
    );
}

#[test]
fn wrong_secret_on_the_client_fails_on_both_sides() {
    // The client checks the server's proof first, fails, and tells it.
    let (c, s) = run(cfg("writer", b"wrong"), cfg("store1", b"cluster-secret"));
    assert_auth_failed(&c);
    assert!(matches!(
        &c,
        Step::Failed { send: Some(Message::Fatal(f)), .. } if f.code == ErrorCode::AUTH_FAILED
    ));
    assert_auth_failed(&s);
}

#[test]
fn wrong_secret_on_the_server_fails_on_both_sides() {
    let (c, s) = run(cfg("writer", b"cluster-secret"), cfg("store1", b"other"));
    assert_auth_failed(&c);
    assert_auth_failed(&s);
}

#[test]
fn lying_client_that_skips_the_check_is_refused_by_the_server() {
    // A client without the secret cannot make a proof the server accepts,
    // whatever it does with the server's hello.
    let (_c, hello) = ClientHandshake::new(cfg("writer", b"x"), N_C);
    let mut s = ServerHandshake::new(cfg("store1", b"cluster-secret"), N_S);
    let _ = sent(&s.step(&wire(&hello)));
    let step = s.step(&wire(&Message::ClientProof(ClientProof {
        proof: Tag([0; 32]),
    })));
    assert_auth_failed(&step);
    assert!(matches!(
        &step,
        Step::Failed { send: Some(Message::Fatal(f)), .. } if f.code == ErrorCode::AUTH_FAILED
    ));
}

/// A good exchange's messages: (client hello, server hello, client proof).
fn good_transcript(n_s: Nonce) -> (Message, Message, Message) {
    let (mut c, hello) = ClientHandshake::new(cfg("writer", b"k"), N_C);
    let mut s = ServerHandshake::new(cfg("store1", b"k"), n_s);
    let sh = sent(&s.step(&hello));
    let proof = sent(&c.step(&sh));
    (hello, sh, proof)
}

#[test]
fn replayed_client_proof_is_refused() {
    let (hello, _, proof) = good_transcript(N_S);
    // Same client hello and proof, but a new connection: a fresh server nonce.
    let mut s = ServerHandshake::new(cfg("store1", b"k"), Nonce([0x77; 32]));
    let _ = s.step(&hello);
    assert_auth_failed(&s.step(&proof));
}

#[test]
fn replayed_server_hello_is_refused_by_a_client_with_a_fresh_nonce() {
    let (_, server_hello, _) = good_transcript(N_S);
    let (mut c, _) = ClientHandshake::new(cfg("writer", b"k"), Nonce([0x99; 32]));
    assert_auth_failed(&c.step(&server_hello));
}

#[test]
fn garbled_proof_is_refused() {
    let (hello, _, proof) = good_transcript(N_S);
    let Message::ClientProof(ClientProof { proof: Tag(mut t) }) = proof else {
        panic!("not a proof")
    };
    t[31] ^= 1;
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let _ = s.step(&hello);
    assert_auth_failed(&s.step(&Message::ClientProof(ClientProof { proof: Tag(t) })));
}

#[test]
fn reflected_server_proof_is_refused() {
    // The server's own proof sent back as the client's: the direction
    // label in the transcript tells them apart.
    let (hello, sh, _) = good_transcript(N_S);
    let Message::ServerHello(ServerHello { proof, .. }) = sh else {
        panic!("not a server hello")
    };
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let _ = s.step(&hello);
    assert_auth_failed(&s.step(&Message::ClientProof(ClientProof { proof })));
}

#[test]
fn server_proof_is_the_documented_hmac() {
    // P_s = HMAC(secret, "locus-repl server->client" || version ||
    //            len id_c || id_c || len id_s || id_s || n_c || n_s)
    let (_, sh, _) = good_transcript(N_S);
    let Message::ServerHello(ServerHello { proof, .. }) = sh else {
        panic!("not a server hello")
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"k").unwrap();
    mac.update(b"locus-repl server->client");
    mac.update(&PROTOCOL_VERSION.to_be_bytes());
    mac.update(b"\x06writer\x06store1");
    mac.update(&N_C.0);
    mac.update(&N_S.0);
    assert_eq!(proof.0, <[u8; 32]>::from(mac.finalize().into_bytes()));
}

fn hello_of_version(version: u16) -> Message {
    Message::ClientHello(ClientHello {
        version,
        node_id: NodeId::new("writer").unwrap(),
        nonce: N_C,
    })
}

#[test]
fn newer_client_is_refused_with_both_versions_named_on_both_sides() {
    let theirs = PROTOCOL_VERSION + 1;
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let step = s.step(&wire(&hello_of_version(theirs)));
    let Step::Failed {
        send: Some(fatal),
        error,
    } = step
    else {
        panic!("server did not refuse: {step:?}")
    };
    assert!(
        matches!(error, ProtoError::VersionMismatch { ours, theirs: t }
        if ours == PROTOCOL_VERSION && t == theirs)
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(text.contains(&format!("version {theirs}")), "{text}");

    // The client (of the other version) decodes the frozen Fatal frame and
    // learns the server's version from it. We stand in for that client with
    // our own machine, which maps it the same way.
    let Message::Fatal(f) = wire(&fatal) else {
        panic!("not a Fatal frame")
    };
    assert_eq!(f.code, ErrorCode::VERSION_MISMATCH);
    assert_eq!(f.version, PROTOCOL_VERSION);
    assert!(
        f.message.contains(&format!("version {theirs}")),
        "{}",
        f.message
    );
    let (mut c, _) = ClientHandshake::new(cfg("writer", b"k"), N_C);
    let older_fatal = Message::Fatal(drbd_like_sync::proto::Fatal {
        version: theirs,
        ..f
    });
    let step = c.step(&older_fatal);
    assert!(
        matches!(step, Step::Failed { send: None, error: ProtoError::VersionMismatch { ours, theirs: t } }
        if ours == PROTOCOL_VERSION && t == theirs),
        "{step:?}"
    );
}

#[test]
fn client_refuses_a_server_of_another_version_and_says_so() {
    let (mut c, _) = ClientHandshake::new(cfg("writer", b"k"), N_C);
    let old = Message::ServerHello(ServerHello {
        version: 0,
        node_id: NodeId::new("store1").unwrap(),
        nonce: N_S,
        proof: Tag([0; 32]),
    });
    let step = c.step(&wire(&old));
    let Step::Failed {
        send: Some(Message::Fatal(f)),
        error,
    } = step
    else {
        panic!("client did not refuse: {step:?}")
    };
    assert!(matches!(
        error,
        ProtoError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 0
        }
    ));
    assert_eq!(f.code, ErrorCode::VERSION_MISMATCH);
    // The server receiving that Fatal fails with the versions too.
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let _ = s.step(&hello_of_version(PROTOCOL_VERSION));
    let step = s.step(&wire(&Message::Fatal(f)));
    assert!(matches!(
        step,
        Step::Failed {
            send: None,
            error: ProtoError::VersionMismatch { .. }
        }
    ));
}

#[test]
fn bad_magic_is_a_decode_error() {
    let mut buf = BytesMut::new();
    encode(&hello_of_version(PROTOCOL_VERSION), &mut buf);
    buf[6] = b'X';
    let err = decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(matches!(err, ProtoError::BadMagic { found } if found[1..] == MAGIC[1..]));
    assert_eq!(err.wire_code(), ErrorCode::PROTOCOL);
}

#[test]
fn nothing_is_accepted_before_or_after_the_handshake_ends() {
    // A request before authentication is refused and ends the machine.
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let step = s.step(&Message::Ping(drbd_like_sync::proto::RequestId(1)));
    assert!(matches!(
        step,
        Step::Failed {
            send: Some(Message::Fatal(_)),
            error: ProtoError::Unexpected { .. }
        }
    ));
    // ...after which even a good hello gets nowhere.
    let step = s.step(&hello_of_version(PROTOCOL_VERSION));
    assert!(matches!(
        step,
        Step::Failed {
            send: None,
            error: ProtoError::HandshakeOver
        }
    ));

    // After a wrong secret, a correct proof is not accepted either.
    let (hello, _, good_proof) = good_transcript(N_S);
    let mut s = ServerHandshake::new(cfg("store1", b"k"), N_S);
    let _ = s.step(&hello);
    assert_auth_failed(&s.step(&Message::ClientProof(ClientProof {
        proof: Tag([1; 32]),
    })));
    assert!(matches!(
        s.step(&good_proof),
        Step::Failed {
            error: ProtoError::HandshakeOver,
            ..
        }
    ));
    assert!(!s.is_done());

    // A client does not take Accept before it has checked the server.
    let (mut c, _) = ClientHandshake::new(cfg("writer", b"k"), N_C);
    assert!(matches!(
        c.step(&Message::Accept),
        Step::Failed {
            error: ProtoError::Unexpected { .. },
            ..
        }
    ));
    assert!(!c.is_done());
}
