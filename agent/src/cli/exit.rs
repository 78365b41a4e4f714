//! Exit codes, and how an error maps to one (the binary's job: the layers
//! below only mark their errors, see [`crate::error`]).
//!
//! The codes are part of the stable command-line surface (README, "Exit
//! codes"): monitoring and scripts branch on them. Errors are `anyhow`
//! chains; the code is chosen by looking for a marker type anywhere in the
//! chain, so context added on the way up never changes the classification.

use std::process::ExitCode;

use crate::error::{
    BusyError, IntegrityError, Interrupted, NothingToCheck, StaleError, ThawingError, UsageError,
};

/// A documented exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// Usage or configuration error: nothing was attempted.
    Usage = 2,
    /// The bucket failed a hardening check whose policy is `abort`.
    Hardening = 3,
    /// The run failed (I/O, store, key provider), or finished incomplete.
    RunFailed = 4,
    /// Stored data failed authentication or did not match its manifest.
    Integrity = 5,
    /// Another run of the same job holds its lock (`--no-wait`).
    Busy = 6,
    /// Archives in a Glacier class are being restored (thawed): rerun later
    /// (`restore --request-only`).
    Thawing = 7,
    /// A check had nothing to check: `verify` found no snapshot, `audit-log
    /// verify` no trail. Not a pass.
    NothingToCheck = 8,
    /// `fleet status`: a host or job has no snapshot within the maximum age.
    Stale = 9,
    /// Interrupted by SIGINT or SIGTERM; stopped cleanly, nothing committed
    /// (128 + SIGINT, as shells report a command stopped by Ctrl-C).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// The exit code for an error.
pub fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if cause.is::<UsageError>()
            || cause.is::<vaultline_config::ConfigError>()
            || cause.is::<clap::Error>()
        {
            return Exit::Usage;
        }
        if cause.is::<crate::cloud::hardening::HardeningError>() {
            return Exit::Hardening;
        }
        if cause.is::<BusyError>() {
            return Exit::Busy;
        }
        if cause.is::<ThawingError>() {
            return Exit::Thawing;
        }
        if cause.is::<NothingToCheck>() {
            return Exit::NothingToCheck;
        }
        if cause.is::<Interrupted>() {
            return Exit::Interrupted;
        }
        if cause.is::<StaleError>() {
            return Exit::Stale;
        }
        if cause.is::<IntegrityError>() {
            return Exit::Integrity;
        }
        let sealed = cause.downcast_ref::<vaultline_crypto::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(vaultline_crypto::Error::from_io)
        });
        if let Some(e) = sealed {
            return if e.is_integrity() {
                Exit::Integrity
            } else {
                Exit::RunFailed
            };
        }
    }
    Exit::RunFailed
}

/// A line to print after the error when the fix is to run as another user:
/// permission was denied somewhere in the chain, and vaultline does not run
/// as root (as a system installation expects).
pub fn hint(err: &anyhow::Error) -> Option<String> {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if !denied || rustix::process::geteuid().is_root() {
        return None;
    }
    Some(format!(
        "hint: permission denied, and vaultline runs as {}, not root: a system installation's configuration, \
         state and repository belong to root; run it as root (`sudo vaultline …`), or as the user that owns \
         the path above",
        crate::cli::app::local_user().trim_start_matches("local ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn classification_survives_added_context() {
        let sealed = std::io::Error::new(std::io::ErrorKind::InvalidData, vaultline_crypto::Error::WrongKey);
        let err = anyhow::Error::new(sealed)
            .context("reading archive")
            .context("restoring snapshot");
        assert_eq!(classify(&err), Exit::Integrity);
        let usage: anyhow::Result<()> = Err(UsageError("no job named x".into()).into());
        assert_eq!(classify(&usage.context("backup").unwrap_err()), Exit::Usage);
        assert_eq!(classify(&anyhow::anyhow!("disk full")), Exit::RunFailed);
    }
}
