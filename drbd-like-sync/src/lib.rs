//! Locus storage-node daemon: mirroring, out-of-sync tracking and resync (not built yet).
