//! Locus iSCSI target.
