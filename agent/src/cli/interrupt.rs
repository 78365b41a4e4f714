//! Ctrl-C and `kill` during a backup: stop cleanly, say so, record it.
//!
//! [`install`] takes over SIGINT and SIGTERM for the rest of the process,
//! with tasks on the one I/O runtime (`cloud::aws::runtime`, which S3
//! repositories use anyway; no second runtime). The first signal sets the
//! flag a backup checks between entries ([`flag`], handed to the pipeline
//! as `RunOptions::cancel`) and says `interrupted, cleaning up`: the run
//! then fails with [`Interrupted`](crate::error::Interrupted), its pending
//! uploads are discarded (nothing is committed), the recorder writes an
//! interrupted run, and the command exits 130. A second signal stops the
//! process at once; what it leaves is removed by the job's next run.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use anyhow::{Context, Result};

static FLAG: AtomicBool = AtomicBool::new(false);
/// 0 (none), 2 (SIGINT) or 15 (SIGTERM).
static SIGNAL: AtomicU8 = AtomicU8::new(0);

/// Handles SIGINT and SIGTERM from now on (see the module documentation).
pub fn install() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = crate::cloud::aws::runtime()?;
    let _entered = rt.enter();
    for (kind, number) in [(SignalKind::interrupt(), 2u8), (SignalKind::terminate(), 15u8)] {
        let mut stream = signal(kind).context("cannot handle SIGINT and SIGTERM")?;
        rt.spawn(async move {
            while stream.recv().await.is_some() {
                received(number);
            }
        });
    }
    Ok(())
}

fn received(number: u8) {
    if FLAG.swap(true, Ordering::SeqCst) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "interrupted again: stopping now; the next run of the job removes what this one left"
        );
        std::process::exit(crate::cli::exit::Exit::Interrupted as i32);
    }
    SIGNAL.store(number, Ordering::SeqCst);
    tracing::warn!(
        "{}: interrupted, cleaning up (again to stop at once)",
        name(number)
    );
}

fn name(number: u8) -> &'static str {
    match number {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// The flag a run checks: set once a signal arrived.
pub fn flag() -> &'static AtomicBool {
    &FLAG
}

/// The signal that interrupted the run, if one did.
pub fn signal() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Some(name(n)),
    }
}
