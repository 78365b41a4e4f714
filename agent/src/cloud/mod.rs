//! AWS: the runtime and clients, and what vaultline knows about AWS
//! accounts beyond storing objects and wrapping keys.
//!
//! - [`aws`]: the one tokio runtime, the SDK configuration built from
//!   `[aws]`, one constructor per client (S3, KMS, STS, SNS), and SDK
//!   errors turned into messages an operator can act on;
//! - [`hardening`]: reading a bucket's security settings, judging them
//!   check by check, and `harden`'s plan to fix them;
//! - [`iam`]: the least-privilege IAM policy text for each role.
//!
//! Uses: `error` only (and the config and SDK crates). The S3 store and the
//! KMS key provider build on [`aws`]; nothing here reads or writes
//! repository objects.

pub mod aws;
pub mod hardening;
pub mod iam;
