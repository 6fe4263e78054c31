//! End-to-end tests across Locus processes; the tests live in `tests/`.
