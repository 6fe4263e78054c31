//! Locus iSCSI target: the protocol library — the PDU codec ([`pdu`]),
//! login negotiation ([`login`]), sessions ([`session`]) and the
//! transport-independent SCSI layer ([`scsi`]) — over the storage engines of
//! `drbd_like_sync::storage`, and the daemon shell that ties them together
//! ([`daemon`]: configuration, the target set, the metadata store's targets
//! and image-backed LUNs, and one `run`).

pub mod daemon;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod session;
