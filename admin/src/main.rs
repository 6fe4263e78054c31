//! `locus`, the operator CLI.
fn main() {}
