//! `locusd`, the Locus target daemon.
fn main() {}
