//! Locus iSCSI target.

pub mod pdu;
pub mod scsi;
pub mod storage;
