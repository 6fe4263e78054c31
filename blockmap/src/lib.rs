//! Locus block placement model: images, blocks, locations and metadata stores.
