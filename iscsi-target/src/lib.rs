//! Locus iSCSI target.

pub mod pdu;
