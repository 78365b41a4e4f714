//! End-to-end suite on the embedded default: a local repository and a local
//! master key, through the real `vaultline` binary. One module per topic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests a panic is the failure report

#[path = "../util/mod.rs"]
mod util;

mod agent;
mod audit_trail;
mod browse;
mod checks;
mod chunks;
mod concurrency;
mod config_errors;
mod errors;
mod filesystem;
mod format_reader;
mod hostile;
mod keys;
mod live;
mod monitoring;
mod output;
mod packaging;
mod patterns;
mod policy;
mod private_state;
mod record;
mod roundtrip;
mod tamper;
mod trust;
