//! One module per command group, and the pieces several commands share
//! (taking a lease here, progress, copying without filling holes).
pub mod cluster;
pub mod image;
pub mod lease_here;
pub mod location;
pub mod node;
pub mod progress;
pub mod sparse_copy;
pub mod sync;
pub mod target;
pub mod transfer;
