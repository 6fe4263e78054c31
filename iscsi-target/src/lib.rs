//! Locus iSCSI target: the PDU codec ([`pdu`]), login negotiation
//! ([`login`]), sessions ([`session`]), the transport-independent SCSI layer
//! ([`scsi`]) over storage engines ([`storage`]), and the daemon that ties
//! them together ([`daemon`], configured by [`config`]).

pub mod config;
pub mod daemon;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod session;
pub mod storage;
pub mod targets;
