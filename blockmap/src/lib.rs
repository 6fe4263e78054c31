//! Locus block placement model and metadata stores.
//!
//! - [`types`], [`image`], [`placement`], [`bitmap`], [`record`]: the UKAI-style
//!   model (image → blocks → locations with sync state), with every placement
//!   invariant enforced in [`record::ImageRecord`];
//! - [`node`], [`target`], [`stats`]: the node registry, iSCSI target
//!   definitions and I/O statistics kept in the store;
//! - [`store`]: the [`store::MetadataStore`] trait, its Redis and embedded
//!   backends, and the change feed ([`change`]);
//! - [`writer`]: the single writer's lease, activity log and dirty marks;
//! - [`ops`]: validated read-modify-write operations that the CLI and the
//!   daemons call.
//!
//! This crate knows nothing about iSCSI sessions, replication or disks.

pub mod bitmap;
pub mod change;
pub mod error;
pub mod image;
pub mod node;
pub mod ops;
pub mod placement;
pub mod record;
pub mod stats;
pub mod store;
pub mod sync;
pub mod target;
pub mod types;
pub mod writer;

pub use error::{Error, ErrorKind, Result};
