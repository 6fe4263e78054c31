//! Locus iSCSI target.

pub mod scsi;
pub mod storage;
