//! `vaultline generate DIR` and `vaultline completions SHELL`: the man
//! pages and shell completions, generated from the clap definitions so they
//! never drift from the real command line.
//!
//! `generate` writes one man page per command (`DIR/man/vaultline.1`,
//! `vaultline-backup.1`, `vaultline-key-export.1`, …: every page the main
//! page's SUBCOMMANDS section refers to) and the completions for bash, zsh
//! and fish (`DIR/completions/`); the Debian package build runs it and
//! installs them. `completions` prints one shell's to standard output, for
//! an installation from source.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::args::{Cli, CompletionShell};

/// Writes `DIR/man/*.1` and `DIR/completions/{vaultline.bash,_vaultline,vaultline.fish}`.
pub fn run(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "vaultline", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    let pages = std::fs::read_dir(&man).map(|d| d.count()).unwrap_or(0);
    crate::cli::output::print_line(&format!(
        "wrote {pages} man pages into {} and completions into {}",
        man.display(),
        completions.display()
    ))?;
    Ok(())
}

/// Prints the completions for `shell` to standard output.
pub fn completions(shell: CompletionShell) -> Result<()> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vaultline", &mut out);
    crate::cli::output::print_line(String::from_utf8_lossy(&out).trim_end())?;
    Ok(())
}
