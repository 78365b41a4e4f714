//! `vaultline key export` and `vaultline key import`: the local master key
//! out for safekeeping, and back in after it was lost.
//!
//! Without the master key no snapshot can be read, and with it every one
//! can: an export is as secret as the key. So it goes only where the
//! operator chose: a new file (created 0600, never over an existing one),
//! or standard output redirected to a file (tightened to 0600 when it is
//! a regular file of theirs) or a pipe (an encrypting program). It is never
//! printed onto a terminal (it would stay in the scrollback), never logged,
//! and the audit trail records only its fingerprint.
//!
//! An import is refused when the repository was sealed with another key
//! (both fingerprints are named), and when a key is in place already
//! (vaultline never replaces a key). The export is the key file's own form
//! with comment lines, so a copy may also be put back as the key file.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use vaultline_crypto::LOCAL_PROVIDER;
use zeroize::Zeroizing;

use crate::cli::app::App;
use crate::error::UsageError;
use crate::keys::local::{KeyInPlace, export_text, parse_key_text};

#[derive(Serialize)]
struct Exported {
    fingerprint: String,
    to: String,
}

#[derive(Serialize)]
struct Imported {
    fingerprint: String,
    location: String,
    /// Whether the key was in place already.
    already: bool,
    /// The repository it was checked against, if there is one.
    repository: Option<String>,
}

/// Runs `key export`.
pub fn export(app: &App, output: Option<&Path>) -> Result<()> {
    let key = app.local_key().map_err(|e| app.missing_key(e))?;
    let text = export_text(&key, &app.config.agent.host);
    let fingerprint = key.master.fingerprint();
    let to = match output {
        Some(path) => {
            let mut file = crate::state::create_new(path, crate::state::PRIVATE).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::Error::from(UsageError(format!(
                        "{} exists already; the key is written only into a new file",
                        path.display()
                    )))
                } else {
                    anyhow::Error::from(e).context(format!("cannot create {}", path.display()))
                }
            })?;
            let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(path);
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
            path.display().to_string()
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(UsageError(
                    "refusing to print the master key onto a terminal (it would stay in the scrollback): \
                     redirect it (`vaultline key export > FILE`, which is made 0600, or `| gpg -c > FILE`) or \
                     use --output FILE"
                        .into(),
                )
                .into());
            }
            private_if_a_file(&stdout)?;
            let mut out = stdout.lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the key to standard output")?;
            "standard output".to_string()
        }
    };
    let recorder = app.recorder("key export");
    recorder.event(
        "key-exported",
        serde_json::json!({ "fingerprint": fingerprint, "to": to }),
    )?;
    if app.repo.check_key(&key.provider()).is_ok() {
        recorder.reached();
    }
    tracing::info!(
        "master key {fingerprint} written to {to}: keep it secret and apart from the backups (it reads every \
         snapshot made with it)"
    );
    if output.is_some() {
        app.out.summary(&Exported { fingerprint, to }, String::new)?;
    }
    Ok(())
}

/// Standard output, when it is a regular file of the running user's that
/// others could read, is made 0600 before the key is written into it.
fn private_if_a_file(stdout: &std::io::Stdout) -> Result<()> {
    let fd = stdout.as_fd();
    let st = rustix::fs::fstat(fd).context("cannot look at standard output")?;
    let is_file = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    if !is_file || st.st_mode & 0o077 == 0 {
        return Ok(());
    }
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(UsageError(format!(
            "standard output is a file of uid {} that others can read (mode {:04o}): the key is not written \
             into it",
            st.st_uid,
            st.st_mode & 0o7777
        ))
        .into());
    }
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(0o600))
        .context("cannot make standard output's file 0600")?;
    Ok(())
}

/// Runs `key import FILE`.
pub fn import(app: &App, file: &Path) -> Result<()> {
    let settings = app.key_settings()?;
    let mut text = Zeroizing::new(String::new());
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.with_context(|| format!("cannot read {}", file.display()))?;
    let master = parse_key_text(&text)
        .map_err(|e| UsageError(format!("{} is not a vaultline master key: {e}", file.display())))?;
    let fingerprint = master.fingerprint();
    let repo = app.repo.store().describe();
    let marker = app.repo.read_marker()?;
    if let Some(m) = &marker {
        if m.key_provider != LOCAL_PROVIDER {
            return Err(UsageError(format!(
                "{repo} was sealed with {} key {}, not a local key: nothing to import",
                m.key_provider, m.key_id
            ))
            .into());
        }
        if m.key_id != fingerprint {
            return Err(UsageError(format!(
                "{} holds local key {fingerprint}, but {repo} was sealed with local key {}: not imported (the \
                 backup of key {} is the one to import)",
                file.display(),
                m.key_id,
                m.key_id
            ))
            .into());
        }
    }
    let (location, already) = match settings.store(master) {
        Ok(key) => (key.location.to_string(), false),
        Err(e) => match e.downcast_ref::<KeyInPlace>() {
            Some(there) if there.fingerprint == fingerprint => (there.location.to_string(), true),
            Some(there) => {
                return Err(UsageError(format!(
                    "{} already holds local key {}; vaultline never replaces a key: move it aside first if it \
                     is the wrong one",
                    there.location, there.fingerprint
                ))
                .into());
            }
            None => return Err(e.context("cannot put the key in place")),
        },
    };
    let recorder = app.recorder("key import");
    recorder.event(
        "key-imported",
        serde_json::json!({ "fingerprint": fingerprint, "location": location, "already": already }),
    )?;
    if marker.is_some() {
        recorder.reached();
    }
    let report = Imported {
        fingerprint,
        location,
        already,
        repository: marker.as_ref().map(|_| repo.clone()),
    };
    app.out.summary(&report, || {
        format!(
            "master key {} {} {}{}",
            report.fingerprint,
            if report.already {
                "is in place already in"
            } else {
                "imported into"
            },
            report.location,
            match &report.repository {
                Some(r) => format!("; it is the key {r} was sealed with"),
                None => format!("; {repo} has no repository yet to check it against"),
            }
        )
    })
}
