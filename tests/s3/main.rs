//! End-to-end suite against the local S3 + KMS server (moto over TLS):
//! the same commands and guarantees as on the embedded default, with an S3
//! bucket as the repository and KMS wrapping every data key. One module per
//! topic; each test makes its own bucket and KMS key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests a panic is the failure report

#[path = "../util/mod.rs"]
mod util;

mod agent;
mod endpoints;
mod faults;
mod fleet;
mod glacier;
mod hardening;
mod hostile_server;
mod iam;
mod incremental;
mod kms;
mod rewrap;
mod roundtrip;
