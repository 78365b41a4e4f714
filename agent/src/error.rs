//! The classes of failure the layers report, as marker error types.
//!
//! Every layer returns `anyhow` chains. Where a failure has a meaning the
//! operator (and the exit code) must see, the layer puts one of these
//! markers into the chain: a usage mistake, stored data that is not what
//! vaultline wrote, a busy job, archives still thawing. The binary maps a
//! chain to its exit code by looking for them (`cli::exit`), so context
//! added on the way up never changes the classification, and no layer
//! below the command line needs to know about exit codes.
//!
//! This module is the bottom of the crate: it imports nothing from it.

/// A usage mistake detected after argument parsing (unknown job, bad glob…).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Stored data that is not what vaultline wrote: a failed authentication, a
/// snapshot whose archive does not match its manifest, an object under the
/// wrong name. Carries the message; the chain carries the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(pub String);

/// The job's lock is held by another run and `--no-wait` was given.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusyError(pub String);

/// Archives must be thawed before they can be read; the restore requests
/// were made and the command was asked not to wait.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ThawingError(pub String);

/// A check found nothing to check (no snapshot to verify, no audit trail):
/// not a pass, and not a failure of what exists either.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NothingToCheck(pub String);

/// The run was interrupted (SIGINT, SIGTERM) and stopped cleanly: nothing
/// was committed. The message, when given, says what was stopped.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.as_deref().unwrap_or("interrupted"))]
pub struct Interrupted(pub Option<String>);

/// A fleet view found hosts or jobs without a recent enough snapshot, so
/// a pager can act on the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StaleError(pub String);

/// True when `err` says stored data is not what vaultline wrote (an
/// [`IntegrityError`], or a sealed object that failed authentication): the
/// object is to be reported and skipped where a command can go on without
/// it, as opposed to a failure to reach it (network, permissions), which
/// stops the command.
pub fn is_integrity(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<IntegrityError>()
            // An IntegrityError carried by an io::Error (a reader's): its
            // source() skips the carried error itself.
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|e| e.is::<IntegrityError>())
            || cause
                .downcast_ref::<vaultline_crypto::Error>()
                .or_else(|| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .and_then(vaultline_crypto::Error::from_io)
                })
                .is_some_and(vaultline_crypto::Error::is_integrity)
    })
}
