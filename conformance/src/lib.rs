//! Runs external conformance suites against locusd.
