//! The oracle of the `cdb_parse` fuzz target: fuzzes CDB parsing and command execution (SPC-4 §4.2, SBC-3 §5) through
//! the public SCSI API, `ScsiTarget::execute` (SAM-5 §5.1). The CDB parser
//! (the opcode table) is private to `iscsi_target::scsi`.
//!
//! One target with one 4 MiB, 512-byte-block memory LU at LUN 0 is built
//! once and shared by every run, so state (persistent reservations, unit
//! attentions, written blocks, mode pages) carries over between inputs: a
//! crash found here may need the inputs before it to reproduce.
//!
//! Input layout: `[sel][e0 e1 e2][CDB; 6 + (sel & 0x1f) % 27][rest]`.
//! `sel` bit 5 picks one of two I_T nexuses. `e` (24-bit big-endian) bit 23
//! sends the command to LUN 1, which does not exist. `sel` bits 6-7:
//! `00`/`01` expected length = Data-Out = rest (write-shaped, as iSCSI
//! delivers it); `10` expected length = `e & 0x7fffff` and Data-Out = rest
//! cut to it; `11` expected length from `e` and no Data-Out (read-shaped).
//! Expected lengths are capped at 1 MiB.
//!
//! Oracles: no panic; Data-In never exceeds the expected length; CHECK
//! CONDITION always carries decodable sense and GOOD never carries sense;
//! only GOOD / CONDITION MET carry Data-In; with Data-In, an underflow
//! residual plus the Data-In length is the expected length, and any other
//! residual means Data-In filled the expected length.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use drbd_like_sync::storage::MemoryBackend;
use futures::executor::block_on;
use iscsi_target::scsi::{
    LogicalUnit, LunConfig, Nexus, Residual, ScsiRequest, ScsiStatus, ScsiTarget, TaskAttr,
};

/// Size of the LU's backend in bytes (8192 blocks of 512 bytes).
const LU_BYTES: u64 = 4 << 20;
/// Largest expected data transfer length a run asks for.
const MAX_EXPECTED: usize = 1 << 20;

struct World {
    target: ScsiTarget,
    nexus: [Nexus; 2],
}

fn nexus(id: u64) -> Nexus {
    let port = format!("iqn.2026-11.test:init{id},i,0x23d00000000{id}");
    Nexus {
        id,
        transport_id: Bytes::from(format!("{port}\0\0\0\0")),
        initiator_port: port,
        relative_port: 1,
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let target = ScsiTarget::new("iqn.2026-11.test:fuzz");
        let backend = Arc::new(MemoryBackend::new(LU_BYTES));
        let lu = LogicalUnit::new(LunConfig::new("FUZZ0001"), backend).expect("LU builds");
        target.add_lun(0, Arc::new(lu));
        World {
            target,
            nexus: [nexus(1), nexus(2)],
        }
    })
}

/// Runs one input through the oracles; panics when one fails.
pub fn check(data: &[u8]) {
    let [sel, e0, e1, e2, rest @ ..] = data else {
        return;
    };
    let cdb_len = 6 + usize::from(sel & 0x1f) % 27;
    if rest.len() < cdb_len {
        return;
    }
    let (cdb, rest) = rest.split_at(cdb_len);
    let e = u32::from_be_bytes([0, *e0, *e1, *e2]);
    let lun = u64::from(e >> 23);
    let e = (e & 0x7f_ffff) as usize;
    let (expected, data_out) = match sel >> 6 {
        0 | 1 => {
            let n = rest.len().min(MAX_EXPECTED);
            (n, &rest[..n])
        }
        2 => {
            let n = e.min(MAX_EXPECTED);
            (n, &rest[..rest.len().min(n)])
        }
        _ => (e.min(MAX_EXPECTED), &[][..]),
    };
    let w = world();
    let req = ScsiRequest {
        lun,
        cdb: Bytes::copy_from_slice(cdb),
        expected_len: expected as u32,
        data_out: Bytes::copy_from_slice(data_out),
        attr: TaskAttr::Simple,
        zero_copy: false,
    };
    let nexus = &w.nexus[usize::from(sel >> 5 & 1)];
    let resp = block_on(w.target.execute(nexus, req));

    let n = resp.data_in.len();
    assert!(n <= expected, "Data-In {n} > expected length {expected}");
    match resp.status {
        ScsiStatus::CHECK_CONDITION => {
            let sense = resp.sense.as_ref().expect("CHECK CONDITION without sense");
            assert!(!sense.is_empty(), "CHECK CONDITION with empty sense");
            assert!(resp.sense_triple().is_some(), "undecodable sense {sense:?}");
        }
        ScsiStatus::GOOD => assert!(resp.sense.is_none(), "GOOD with sense"),
        _ => {}
    }
    if n > 0 {
        assert!(
            matches!(resp.status, ScsiStatus::GOOD | ScsiStatus::CONDITION_MET),
            "status {:?} with {n} bytes of Data-In",
            resp.status
        );
        match resp.residual {
            Residual::Underflow(u) => assert_eq!(
                n + u as usize,
                expected,
                "underflow {u} + Data-In {n} != expected"
            ),
            Residual::None | Residual::Overflow(_) => {
                assert_eq!(n, expected, "no underflow but Data-In {n} < {expected}")
            }
        }
    }
}
