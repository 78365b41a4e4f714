//! `vaultline generate DIR` (hidden): the man page and shell completions,
//! generated from the clap definitions so they never drift from the real
//! command line. The Debian package build runs it.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::args::Cli;

/// Writes `DIR/vaultline.1` and `DIR/completions/{vaultline.bash,_vaultline,vaultline.fish}`.
pub fn run(dir: &Path) -> Result<()> {
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .context("rendering the man page")?;
    let man = dir.join("vaultline.1");
    std::fs::write(&man, page).with_context(|| format!("cannot write {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "vaultline", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    crate::cli::output::print_line(&format!("wrote {} and {}", man.display(), completions.display()))?;
    Ok(())
}
