//! Locus iSCSI target.

pub mod login;
pub mod pdu;
pub mod scsi;
pub mod storage;
