//! Helpers of the mirror tests (tier 3: real node servers on
//! `127.0.0.1:0`, a real redis-server, temp dirs).
#![allow(dead_code)]

pub mod cluster;
#[path = "../../../blockmap/tests/common/redis.rs"]
pub mod redis;
pub mod storage_suite;
