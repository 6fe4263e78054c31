//! Random CDBs and Data-Out never panic and always give a well-formed response.

mod scsi_util;
use bytes::Bytes;
use iscsi_target::scsi::{Residual, ScsiRequest, ScsiStatus, TaskAttr};
use proptest::prelude::*;
use scsi_util::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
    #[test]
    fn random_cdbs_never_panic(
        cdb in proptest::collection::vec(any::<u8>(), 0..20),
        known_op in proptest::sample::select(vec![
            0x00u8, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x25, 0x28, 0x2a,
            0x2e, 0x2f, 0x34, 0x35, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x5e, 0x5f, 0x88,
            0x89, 0x8a, 0x8b, 0x8e, 0x8f, 0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa,
            0xae, 0xaf,
        ]),
        use_known in any::<bool>(),
        small in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        expected in 0u32..70000,
        lun in 0u64..3,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = target();
        let n = nexus(1);
        let mut cdb = cdb;
        if use_known && !cdb.is_empty() {
            cdb[0] = known_op;
            if small {
                // Keep lengths small so that valid commands actually run.
                for b in cdb.iter_mut().skip(2) {
                    *b &= 0x03;
                }
            }
        }
        let data_len = data.len().min(expected as usize);
        let r = rt.block_on(t.execute(&n, ScsiRequest {
            lun,
            cdb: Bytes::from(cdb),
            expected_len: expected,
            data_out: Bytes::from(data).slice(..data_len),
            attr: TaskAttr::Simple,
            zero_copy: false,
        }));
        prop_assert!(r.data_in.len() <= expected as usize);
        if r.status == ScsiStatus::CHECK_CONDITION {
            prop_assert!(r.sense_triple().is_some());
        } else {
            prop_assert!(r.sense.is_none());
        }
        if let Residual::Underflow(u) = r.residual {
            prop_assert!(u <= expected);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Parameter-list commands with a consistent length and random payloads.
    #[test]
    fn random_parameter_lists_never_panic(
        which in 0usize..6,
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        flags in any::<u8>(),
        two_nexus in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = target();
        let n = nexus(if two_nexus { 2 } else { 1 });
        let len = payload.len();
        let cdb: Vec<u8> = match which {
            0 => { let mut c = vec![0x5f, flags & 0x07, flags, 0, 0, 0, 0, 0, 24, 0]; c[8] = 24; c }
            1 => vec![0x15, 0x10, 0, 0, len.min(255) as u8, 0],
            2 => { let mut c = vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]; c[7..9].copy_from_slice(&(len as u16).to_be_bytes()); c }
            3 => { let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0]; c[7..9].copy_from_slice(&(len as u16).to_be_bytes()); c }
            4 => { let mut c = vec![0u8; 16]; c[0] = 0x83; c[10..14].copy_from_slice(&(len as u32).to_be_bytes()); c }
            _ => { let mut c = vec![0u8; 16]; c[0] = 0x89; c[13] = (len / 1024) as u8; c }
        };
        let expected = match which { 0 => 24, 1 => len.min(255), _ => len } as u32;
        let mut data = payload;
        data.resize(expected as usize, 0);
        let r = rt.block_on(t.execute(&n, ScsiRequest {
            lun: 0,
            cdb: Bytes::from(cdb),
            expected_len: expected,
            data_out: Bytes::from(data),
            attr: TaskAttr::Simple,
            zero_copy: false,
        }));
        prop_assert!(r.data_in.is_empty());
        prop_assert_eq!(r.status == ScsiStatus::CHECK_CONDITION, r.sense.is_some());
    }
}
