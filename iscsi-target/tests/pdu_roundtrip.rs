//! Property tests of the PDU codec (RFC 7143 §11): every one of the 18 PDU
//! types, with arbitrary field values, data segments and AHSs, survives
//! encode -> frame -> decode under all four digest combinations, and the
//! framer needs exactly the encoded bytes (no more, no fewer) to yield a PDU.

use bytes::{Bytes, BytesMut};
use iscsi_target::pdu::digest::crc32c;
use iscsi_target::pdu::{
    decode_frame, pad_len, Ahs, AsyncEvent, AsyncMessage, Bhs, DataIn, DataOut, Digests,
    FrameLimits, Itt, LoginFlags, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
    NopIn, NopOut, Pdu, R2t, Reject, RejectReason, Residual, ScsiCommand, ScsiResponse, SeqNum,
    SnackRequest, TaskAttr, TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse,
    TmfFunction, TmfResponseCode, Ttt, BHS_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Limits large enough for every generated PDU.
fn limits(d: Digests) -> FrameLimits {
    FrameLimits {
        max_recv_data_segment: 16 * 1024,
        header_digest: d.header,
        data_digest: d.data,
    }
}

const ALL_DIGESTS: [Digests; 4] = [
    Digests {
        header: false,
        data: false,
    },
    Digests {
        header: true,
        data: false,
    },
    Digests {
        header: false,
        data: true,
    },
    Digests {
        header: true,
        data: true,
    },
];

fn sn() -> impl Strategy<Value = SeqNum> {
    any::<u32>().prop_map(SeqNum)
}
fn itt() -> impl Strategy<Value = Itt> {
    any::<u32>().prop_map(Itt)
}
fn ttt() -> impl Strategy<Value = Ttt> {
    any::<u32>().prop_map(Ttt)
}

fn residual() -> impl Strategy<Value = Residual> {
    prop_oneof![
        Just(Residual::None),
        any::<u32>().prop_map(Residual::Underflow),
        any::<u32>().prop_map(Residual::Overflow),
    ]
}

fn task_attr() -> impl Strategy<Value = TaskAttr> {
    prop_oneof![
        Just(TaskAttr::Untagged),
        Just(TaskAttr::Simple),
        Just(TaskAttr::Ordered),
        Just(TaskAttr::HeadOfQueue),
        Just(TaskAttr::Aca),
        (5u8..=7).prop_map(TaskAttr::Reserved),
    ]
}

fn login_flags() -> impl Strategy<Value = LoginFlags> {
    (any::<bool>(), any::<bool>(), 0u8..4, 0u8..4).prop_map(|(transit, cont, csg, nsg)| {
        LoginFlags {
            transit,
            cont,
            csg,
            nsg,
        }
    })
}

fn nop_out() -> impl Strategy<Value = Bhs> {
    (any::<bool>(), any::<u64>(), itt(), ttt(), sn(), sn()).prop_map(
        |(immediate, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
            Bhs::NopOut(NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            })
        },
    )
}

fn scsi_command_fields() -> impl Strategy<Value = ScsiCommand> {
    (
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        task_attr(),
        any::<u64>(),
        itt(),
        any::<u32>(),
        sn(),
        sn(),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |(
                (immediate, final_, read, write),
                attr,
                lun,
                itt,
                expected_len,
                cmd_sn,
                exp_stat_sn,
                cdb,
            )| ScsiCommand {
                immediate,
                final_,
                read,
                write,
                attr,
                lun,
                itt,
                expected_len,
                cmd_sn,
                exp_stat_sn,
                cdb,
            },
        )
}

fn scsi_command() -> impl Strategy<Value = Bhs> {
    scsi_command_fields().prop_map(Bhs::ScsiCommand)
}

fn task_mgmt_request() -> impl Strategy<Value = Bhs> {
    (
        any::<bool>(),
        0u8..0x80,
        any::<u64>(),
        itt(),
        itt(),
        sn(),
        sn(),
        sn(),
        any::<u32>(),
    )
        .prop_map(
            |(immediate, f, lun, itt, ref_itt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn)| {
                Bhs::TaskMgmtRequest(TaskMgmtRequest {
                    immediate,
                    function: TmfFunction(f),
                    lun,
                    itt,
                    ref_itt,
                    cmd_sn,
                    exp_stat_sn,
                    ref_cmd_sn,
                    exp_data_sn,
                })
            },
        )
}

fn login_request() -> impl Strategy<Value = Bhs> {
    (
        login_flags(),
        any::<u8>(),
        any::<u8>(),
        any::<[u8; 6]>(),
        any::<u16>(),
        itt(),
        any::<u16>(),
        sn(),
        sn(),
    )
        .prop_map(
            |(flags, version_max, version_min, isid, tsih, itt, cid, cmd_sn, exp_stat_sn)| {
                Bhs::LoginRequest(LoginRequest {
                    flags,
                    version_max,
                    version_min,
                    isid,
                    tsih,
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn,
                })
            },
        )
}

fn text_request() -> impl Strategy<Value = Bhs> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        itt(),
        ttt(),
        sn(),
        sn(),
    )
        .prop_map(
            |(immediate, final_, cont, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
                Bhs::TextRequest(TextRequest {
                    immediate,
                    final_,
                    cont,
                    lun,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn,
                })
            },
        )
}

fn data_out() -> impl Strategy<Value = Bhs> {
    (
        any::<bool>(),
        any::<u64>(),
        itt(),
        ttt(),
        sn(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(final_, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset)| {
                Bhs::DataOut(DataOut {
                    final_,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn,
                    data_sn,
                    buffer_offset,
                })
            },
        )
}

fn logout_request() -> impl Strategy<Value = Bhs> {
    (any::<bool>(), 0u8..0x80, itt(), any::<u16>(), sn(), sn()).prop_map(
        |(immediate, reason, itt, cid, cmd_sn, exp_stat_sn)| {
            Bhs::LogoutRequest(LogoutRequest {
                immediate,
                reason,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            })
        },
    )
}

fn snack_request() -> impl Strategy<Value = Bhs> {
    (
        0u8..16,
        any::<u64>(),
        itt(),
        ttt(),
        sn(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(snack_type, lun, itt, ttt, exp_stat_sn, beg_run, run_length)| {
                Bhs::SnackRequest(SnackRequest {
                    snack_type,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn,
                    beg_run,
                    run_length,
                })
            },
        )
}

fn nop_in() -> impl Strategy<Value = Bhs> {
    (any::<u64>(), itt(), ttt(), sn(), sn(), sn()).prop_map(
        |(lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
            Bhs::NopIn(NopIn {
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
            })
        },
    )
}

fn scsi_response() -> impl Strategy<Value = Bhs> {
    (
        prop_oneof![Just(0u8), Just(0x08), Just(0x10), Just(0x18)],
        residual(),
        any::<u8>(),
        any::<u8>(),
        itt(),
        any::<u32>(),
        (sn(), sn(), sn()),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                bidi_flags,
                residual,
                response,
                status,
                itt,
                snack_tag,
                (stat_sn, exp_cmd_sn, max_cmd_sn),
                exp_data_sn,
                bidi_residual,
            )| {
                Bhs::ScsiResponse(ScsiResponse {
                    bidi_flags,
                    residual,
                    response,
                    status,
                    itt,
                    snack_tag,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    exp_data_sn,
                    bidi_residual,
                })
            },
        )
}

fn task_mgmt_response() -> impl Strategy<Value = Bhs> {
    (any::<u8>(), itt(), sn(), sn(), sn()).prop_map(
        |(response, itt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
            Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponseCode(response),
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
            })
        },
    )
}

fn login_response() -> impl Strategy<Value = Bhs> {
    (
        login_flags(),
        any::<u8>(),
        any::<u8>(),
        any::<[u8; 6]>(),
        any::<u16>(),
        itt(),
        (sn(), sn(), sn()),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(
            |(
                flags,
                version_max,
                version_active,
                isid,
                tsih,
                itt,
                (stat_sn, exp_cmd_sn, max_cmd_sn),
                status_class,
                status_detail,
            )| {
                Bhs::LoginResponse(LoginResponse {
                    flags,
                    version_max,
                    version_active,
                    isid,
                    tsih,
                    itt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    status_class,
                    status_detail,
                })
            },
        )
}

fn text_response() -> impl Strategy<Value = Bhs> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        itt(),
        ttt(),
        sn(),
        sn(),
        sn(),
    )
        .prop_map(
            |(final_, cont, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
                Bhs::TextResponse(TextResponse {
                    final_,
                    cont,
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                })
            },
        )
}

fn data_in() -> impl Strategy<Value = Bhs> {
    (
        (any::<bool>(), any::<bool>()),
        residual(),
        proptest::option::of(any::<u8>()),
        any::<u64>(),
        itt(),
        ttt(),
        (sn(), sn(), sn()),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                (final_, ack),
                residual,
                status,
                lun,
                itt,
                ttt,
                (stat_sn, exp_cmd_sn, max_cmd_sn),
                data_sn,
                buffer_offset,
            )| {
                Bhs::DataIn(DataIn {
                    final_,
                    ack,
                    residual,
                    status,
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    data_sn,
                    buffer_offset,
                })
            },
        )
}

fn logout_response() -> impl Strategy<Value = Bhs> {
    (
        any::<u8>(),
        itt(),
        sn(),
        sn(),
        sn(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            |(response, itt, stat_sn, exp_cmd_sn, max_cmd_sn, time2wait, time2retain)| {
                Bhs::LogoutResponse(LogoutResponse {
                    response,
                    itt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    time2wait,
                    time2retain,
                })
            },
        )
}

fn r2t() -> impl Strategy<Value = Bhs> {
    (
        any::<u64>(),
        itt(),
        ttt(),
        (sn(), sn(), sn()),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                lun,
                itt,
                ttt,
                (stat_sn, exp_cmd_sn, max_cmd_sn),
                r2t_sn,
                buffer_offset,
                desired_len,
            )| {
                Bhs::R2t(R2t {
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    r2t_sn,
                    buffer_offset,
                    desired_len,
                })
            },
        )
}

fn async_message() -> impl Strategy<Value = Bhs> {
    (
        any::<u64>(),
        (sn(), sn(), sn()),
        any::<u8>(),
        any::<u8>(),
        any::<[u16; 3]>(),
    )
        .prop_map(
            |(lun, (stat_sn, exp_cmd_sn, max_cmd_sn), event, vcode, params)| {
                Bhs::AsyncMessage(AsyncMessage {
                    lun,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    event: AsyncEvent(event),
                    vcode,
                    params,
                })
            },
        )
}

fn reject() -> impl Strategy<Value = Bhs> {
    (any::<u8>(), sn(), sn(), sn(), any::<u32>()).prop_map(
        |(reason, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn)| {
            Bhs::Reject(Reject {
                reason: RejectReason(reason),
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn,
            })
        },
    )
}

/// Any of the 18 BHS types, with every field drawn over its wire width.
fn any_bhs() -> impl Strategy<Value = Bhs> {
    prop_oneof![
        nop_out(),
        scsi_command(),
        task_mgmt_request(),
        login_request(),
        text_request(),
        data_out(),
        logout_request(),
        snack_request(),
        nop_in(),
        scsi_response(),
        task_mgmt_response(),
        login_response(),
        text_response(),
        data_in(),
        logout_response(),
        r2t(),
        async_message(),
        reject(),
    ]
}

/// Data segments of 0..=9000 bytes, most of them not a multiple of 4.
fn data_segment() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        1 => Just(Bytes::new()),
        4 => vec(any::<u8>(), 0..=9000).prop_map(Bytes::from),
    ]
}

/// AHSs a SCSI Command carries (RFC 7143 §11.2.2.3, §11.2.2.4): an optional
/// Extended CDB AHS holding CDB bytes 17..=260, and an optional Expected
/// Bidirectional Read Data Length AHS.
fn scsi_ahs() -> impl Strategy<Value = Vec<Ahs>> {
    (
        proptest::option::of(vec(any::<u8>(), 1..=244)),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(ext_cdb, bidi)| {
            let mut v = Vec::new();
            if let Some(rest) = ext_cdb {
                v.push(Ahs {
                    ahs_type: Ahs::EXTENDED_CDB,
                    specific: 0,
                    data: Bytes::from(rest),
                });
            }
            if let Some(len) = bidi {
                v.push(Ahs {
                    ahs_type: Ahs::BIDI_READ_LENGTH,
                    specific: 0,
                    data: Bytes::copy_from_slice(&len.to_be_bytes()),
                });
            }
            v
        })
}

/// A whole PDU: any BHS with any data; SCSI Commands also get AHSs.
fn any_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (any_bhs(), data_segment()).prop_map(|(bhs, data)| Pdu::new(bhs, data)),
        (scsi_command(), scsi_ahs(), data_segment()).prop_map(|(bhs, ahs, data)| Pdu {
            bhs,
            ahs,
            data
        }),
    ]
}

fn ahs_area_len(pdu: &Pdu) -> usize {
    pdu.ahs
        .iter()
        .map(|a| 4 + a.data.len() + pad_len(a.data.len()))
        .sum()
}

/// The wire length RFC 7143 §11.2 gives for a PDU.
fn expected_wire_len(pdu: &Pdu, d: Digests) -> usize {
    let mut n = BHS_LEN + ahs_area_len(pdu);
    if d.header {
        n += 4;
    }
    if !pdu.data.is_empty() {
        n += pdu.data.len() + pad_len(pdu.data.len());
        if d.data {
            n += 4;
        }
    }
    n
}

/// Checks the digests and padding in `wire` independently of the framer.
fn check_wire_layout(pdu: &Pdu, d: Digests, wire: &[u8]) -> Result<(), TestCaseError> {
    let hdr_end = BHS_LEN + ahs_area_len(pdu);
    let mut at = hdr_end;
    if d.header {
        let got = u32::from_le_bytes([wire[at], wire[at + 1], wire[at + 2], wire[at + 3]]);
        prop_assert_eq!(got, crc32c(&wire[..hdr_end]), "header digest");
        at += 4;
    }
    if !pdu.data.is_empty() {
        let padded = pdu.data.len() + pad_len(pdu.data.len());
        prop_assert_eq!(&wire[at..at + pdu.data.len()], &pdu.data[..]);
        prop_assert!(
            wire[at + pdu.data.len()..at + padded]
                .iter()
                .all(|&b| b == 0),
            "padding must be zero"
        );
        if d.data {
            let e = at + padded;
            let got = u32::from_le_bytes([wire[e], wire[e + 1], wire[e + 2], wire[e + 3]]);
            prop_assert_eq!(got, crc32c(&wire[at..e]), "data digest");
        }
    }
    Ok(())
}

/// Encodes under `d`, frames the bytes followed by a trailing sentinel, and
/// decodes; returns the decoded PDU.
fn round_trip(pdu: &Pdu, d: Digests) -> Result<Pdu, TestCaseError> {
    let wire = pdu.to_vec(d);
    prop_assert_eq!(wire.len(), expected_wire_len(pdu, d));
    prop_assert_eq!(&wire[..BHS_LEN], &pdu.bhs_bytes()[..]);
    check_wire_layout(pdu, d, &wire)?;

    // The vectored encoding must concatenate to the same bytes.
    let mut parts = Vec::new();
    pdu.encode(d, &mut parts);
    let joined: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    prop_assert_eq!(&joined, &wire);

    let sentinel = [0xA5u8; 7];
    let mut buf = BytesMut::from(&wire[..]);
    buf.extend_from_slice(&sentinel);
    let raw = decode_frame(&mut buf, &limits(d))
        .map_err(|e| TestCaseError::fail(format!("frame error {e}")))?
        .ok_or_else(|| TestCaseError::fail("complete PDU not framed"))?;
    prop_assert_eq!(&buf[..], &sentinel[..], "framer consumed a wrong length");
    prop_assert!(raw.data_digest_ok);
    Pdu::decode(&raw).map_err(|e| TestCaseError::fail(format!("decode error {e}")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Every PDU type survives encode -> frame -> decode under all four
    /// digest combinations.
    #[test]
    fn every_pdu_round_trips(pdu in any_pdu()) {
        for d in ALL_DIGESTS {
            let back = round_trip(&pdu, d)?;
            prop_assert_eq!(&back, &pdu, "digests {:?}", d);
        }
    }

    /// The framer returns Ok(None) for every proper prefix of a PDU, and the
    /// PDU once the last byte arrives, when bytes trickle in one at a time.
    #[test]
    fn framing_is_incremental_byte_by_byte(
        bhs in any_bhs(),
        data in vec(any::<u8>(), 0..=600),
        di in 0usize..4,
    ) {
        let d = ALL_DIGESTS[di];
        let pdu = Pdu::new(bhs, Bytes::from(data));
        let wire = pdu.to_vec(d);
        let mut buf = BytesMut::new();
        for (i, &b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let got = decode_frame(&mut buf, &limits(d))
                .map_err(|e| TestCaseError::fail(format!("frame error {e} at {i}")))?;
            if i + 1 < wire.len() {
                prop_assert!(got.is_none(), "framed early after {} of {} bytes", i + 1, wire.len());
                prop_assert_eq!(buf.len(), i + 1, "framer consumed bytes of an incomplete PDU");
            } else {
                let raw = got.ok_or_else(|| TestCaseError::fail("not framed when complete"))?;
                prop_assert!(buf.is_empty());
                prop_assert_eq!(Pdu::decode(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?, pdu.clone());
            }
        }
    }

    /// A stream of several PDUs cut at random points yields exactly those PDUs
    /// in order, and Ok(None) whenever the buffer holds no whole PDU.
    #[test]
    fn framing_a_stream_cut_at_random_points(
        pdus in vec(any_pdu(), 1..5),
        cuts in vec(1usize..3000, 1..40),
        di in 0usize..4,
    ) {
        let d = ALL_DIGESTS[di];
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for p in &pdus {
            stream.extend_from_slice(&p.to_vec(d));
            ends.push(stream.len());
        }
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let mut consumed = 0usize;
        let mut out = Vec::new();
        let mut cut = cuts.iter().cycle();
        while fed < stream.len() {
            let n = (*cut.next().unwrap_or(&1)).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            loop {
                let got = decode_frame(&mut buf, &limits(d))
                    .map_err(|e| TestCaseError::fail(format!("frame error {e}")))?;
                match got {
                    Some(raw) => {
                        prop_assert!(raw.data_digest_ok);
                        consumed = ends[out.len()];
                        prop_assert!(consumed <= fed, "framed bytes not yet received");
                        out.push(Pdu::decode(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?);
                    }
                    None => {
                        // No whole PDU left: the next end lies beyond what was fed.
                        prop_assert!(out.len() == pdus.len() || ends[out.len()] > fed);
                        break;
                    }
                }
            }
            prop_assert_eq!(buf.len(), fed - consumed);
        }
        prop_assert_eq!(out, pdus);
    }
}

/// A fixed instance of each of the 18 types, so a failure names its type even
/// without proptest shrinking, and so every variant is certainly exercised.
#[test]
fn each_variant_is_generated_and_round_trips() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let strategies: Vec<(&str, BoxedStrategy<Bhs>)> = vec![
        ("NopOut", nop_out().boxed()),
        ("ScsiCommand", scsi_command().boxed()),
        ("TaskMgmtRequest", task_mgmt_request().boxed()),
        ("LoginRequest", login_request().boxed()),
        ("TextRequest", text_request().boxed()),
        ("DataOut", data_out().boxed()),
        ("LogoutRequest", logout_request().boxed()),
        ("SnackRequest", snack_request().boxed()),
        ("NopIn", nop_in().boxed()),
        ("ScsiResponse", scsi_response().boxed()),
        ("TaskMgmtResponse", task_mgmt_response().boxed()),
        ("LoginResponse", login_response().boxed()),
        ("TextResponse", text_response().boxed()),
        ("DataIn", data_in().boxed()),
        ("LogoutResponse", logout_response().boxed()),
        ("R2t", r2t().boxed()),
        ("AsyncMessage", async_message().boxed()),
        ("Reject", reject().boxed()),
    ];
    assert_eq!(strategies.len(), 18);
    let mut runner = TestRunner::deterministic();
    for (name, s) in strategies {
        for _ in 0..64 {
            let bhs = s.new_tree(&mut runner).expect("strategy").current();
            let pdu = Pdu::new(bhs, Bytes::from_static(b"abcde"));
            for d in ALL_DIGESTS {
                let back = round_trip(&pdu, d).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(back, pdu, "{name} with {d:?}");
            }
        }
    }
}
