//! One module per command group.
pub mod cluster;
pub mod image;
pub mod location;
pub mod node;
pub mod sync;
pub mod target;
