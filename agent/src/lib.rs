//! vaultline's engine: envelope-encrypted backups of server directories.
//!
//! The `vaultline` binary (`main.rs`) is a thin shell over this library:
//! it parses the command line, calls [`cli::run`], and maps the error to an
//! exit code. Everything else is here, in layers. Each folder is one layer;
//! each layer uses only those below it:
//!
//! ```text
//! cli        the operator's shell: clap definitions (args), the loaded
//!  │         configuration (app), output and progress, snapshot selection,
//!  │         signals, exit codes, one module per command (commands/), the
//!  │         service (service/)
//!  ▼
//! ops        what a run leaves behind: the run report and its recorder,
//!  │         job status files and metrics, the hash-chained audit trail;
//!  │         the fleet view of every host in a shared bucket
//!  ▼
//! pipeline   the engine: walk + tar + frames + change detection → backup,
//!  │         between a job's hooks, with its command sources streamed in;
//!  │         snapshot reading → thaw → extract → restore
//!  ▼
//! repo       the repository: layout and marker, manifests, retention,
//!  │         job locks, object stores (local directory, S3 bucket)
//!  ▼
//! keys       key providers: the local master key, AWS KMS
//!  ▼
//! cloud      AWS: the runtime and clients, bucket hardening, IAM policy text
//!  ▼
//! error      the failure classes every layer marks its errors with;
//! units      byte counts for messages
//! ```
//!
//! Beside the agent sit two crates it builds on: `vaultline-crypto` (the
//! sealed-object format: bytes and keys, no I/O) and `vaultline-config`
//! (the configuration schema and its validation). The formats are
//! specified in `docs/FORMAT.md`.
//!
//! Where to start reading: a backup is [`pipeline::backup::run`], called by
//! [`cli::commands::backup`]; a restore is [`pipeline::snapshot::SnapshotReader`]
//! feeding [`pipeline::extract::Extractor`], called by
//! [`cli::commands::restore`]; a new object store implements
//! [`repo::store::ObjectStore`].

pub mod cli;
pub mod cloud;
pub mod error;
pub mod keys;
pub mod ops;
pub mod pipeline;
pub mod repo;
pub mod state;
pub mod units;
