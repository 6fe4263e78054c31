//! Locus iSCSI target.

pub mod login;
