//! Locus iSCSI target: the PDU codec ([`pdu`]), login negotiation
//! ([`login`]), sessions ([`session`]), the transport-independent SCSI layer
//! ([`scsi`]) over storage engines ([`storage`]), and the daemon that ties
//! them together ([`daemon`], configured by [`config`]), which also serves
//! the targets of a metadata store ([`metadata`]) over image-backed LUNs
//! ([`imagelun`]).

pub mod config;
pub mod daemon;
pub mod imagelun;
pub mod login;
pub mod metadata;
pub mod pdu;
pub mod scsi;
pub mod session;
pub mod storage;
pub mod targets;
