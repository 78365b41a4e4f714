//! The pipeline: the engine that turns a tree of files into a snapshot and
//! a snapshot back into files.
//!
//! ```text
//! backup:  hooks: before → walk (archive::Walker) ⋈ local record (changes), command sources
//!          merged in walk order (child) → tar (archive::TarWriter) → zstd frames (frames)
//!          → seal → archive object; every entry → manifest → hooks: after
//! restore: manifest → plan (snapshot) → thaw (thaw) → ranged reads of the frames
//!          it needs, read on producer threads, authenticated, decrypted and
//!          decompressed frame by frame on a worker pool (inflate) → tar entries
//!          checked against the manifest → extract (safe placement)
//! ```
//!
//! A run of a job goes through [`hooks::around`] (its `before` and `after`
//! hooks); its command sources, and `backup stdin`'s pipe, are streamed
//! into the snapshot as files below `/vaultline-streams` by the backup
//! itself. Both run the operator's commands through [`child`] (a process
//! group each, a timeout, bounded standard error).
//!
//! Main types: [`backup::run`] and its [`backup::BackupReport`];
//! [`snapshot::SnapshotReader`] (plan and read a snapshot);
//! [`extract::Extractor`] (write entries below a target, safely);
//! [`Progress`], what a long run reports to whoever draws it.
//!
//! Uses: `repo` (layout, manifests, stores), `keys` through the
//! `KeyWrap` trait, `error`, `units`. Knows nothing of the command line,
//! output formatting, exit codes or the audit trail: what it did comes back
//! as a report value.

pub mod backup;
pub mod changes;
pub mod child;
pub mod chunks;
pub mod extract;
pub mod frames;
pub mod fsmeta;
pub mod hooks;
pub mod inflate;
pub mod pipe;
pub mod snapshot;
pub mod tar;
pub mod thaw;
pub mod tree;
pub mod walk;

/// What a long run reports as it goes; the command line draws it as a bar
/// or logs it.
pub trait Progress: Sync {
    /// `bytes` more processed, `files` more entries done.
    fn add(&self, bytes: u64, files: u64);
    /// A warning about one entry, shown without breaking the display.
    fn warn(&self, message: &str);
}

/// A [`Progress`] that shows nothing (tests, fuzzing, benchmarks), but
/// logs warnings.
pub struct Silent;

impl Progress for Silent {
    fn add(&self, _bytes: u64, _files: u64) {}

    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}
