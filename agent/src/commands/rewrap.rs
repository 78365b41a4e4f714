//! `vaultline rewrap --to-key KEY` (see docs/key-rotation.md).

use anyhow::Result;

use crate::app::App;
use crate::cli::RewrapArgs;

/// Runs `rewrap`.
pub fn run(app: &App, args: &RewrapArgs) -> Result<()> {
    let _ = (app, args);
    anyhow::bail!("rewrap: being written")
}
