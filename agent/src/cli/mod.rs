//! The command line: the operator-facing shell over the engine.
//!
//! - [`args`]: every subcommand and flag, as clap definitions (the stable
//!   surface described in PRODUCT.md);
//! - [`app`]: what every command starts from: the loaded configuration, the
//!   repository, the key provider, the recorder of the invocation;
//! - [`output`]: logs, results (text or `--json`), `-q`, a stdout whose
//!   reader went away, and progress;
//! - [`select`]: which snapshots a reading command means (`--host` and
//!   `--job` checked, snapshot id prefixes);
//! - [`interrupt`]: SIGINT and SIGTERM during a backup;
//! - [`exit`]: exit codes, how an error chain maps to one, and the hint
//!   printed after a permission error;
//! - [`commands`]: one module per subcommand;
//! - [`service`]: `vaultline agent`, the scheduler and watcher.
//!
//! Uses every layer below (`ops`, `pipeline`, `repo`, `keys`, `cloud`);
//! nothing below uses it.

pub mod app;
pub mod args;
pub mod commands;
pub mod exit;
pub mod interrupt;
pub mod output;
pub mod select;
pub mod service;

use crate::cli::app::App;
use crate::cli::args::{AuditLogCommand, Cli, Command, FleetCommand, KeyCommand, PolicyCommand};
use crate::cli::output::Output;

/// Runs the parsed command line with output settings `out`.
pub fn run(cli: &Cli, out: Output) -> anyhow::Result<()> {
    // Needs no configuration.
    if let Command::Generate { dir } = &cli.command {
        return commands::generate::run(dir);
    }
    if let Command::Completions { shell } = &cli.command {
        return commands::generate::completions(*shell);
    }
    // An auditor's copy of a trail is checked with or without one.
    if let Command::AuditLog(AuditLogCommand::Verify { file: Some(file) }) = &cli.command {
        return match App::load(cli, out) {
            Ok(app) => commands::audit::verify_log(Some(&app), Some(file), &out),
            Err(e) if cli.config.is_none() => {
                tracing::info!(
                    "no configuration ({e:#}): checking the chain of {} alone",
                    file.display()
                );
                commands::audit::verify_log(None, Some(file), &out)
            }
            Err(e) => Err(e),
        };
    }
    let app = App::load(cli, out)?;
    match &cli.command {
        Command::Init => commands::init::run(&app),
        Command::Backup(args) => commands::backup::run(&app, args),
        Command::Snapshots(args) => commands::snapshots::run(&app, args),
        Command::Ls(args) => commands::ls::run(&app, args),
        Command::Find(args) => commands::ls::find(&app, args),
        Command::Restore(args) => commands::restore::run(&app, args),
        Command::Verify(args) => commands::verify::run(&app, args),
        Command::Forget(args) => commands::forget::run(&app, args),
        Command::Rewrap(args) => commands::rewrap::run(&app, args),
        Command::Policy(PolicyCommand::Iam { role }) => commands::policy::run(&app, *role),
        Command::Audit => commands::audit::run(&app),
        Command::Status => commands::status::run(&app),
        Command::Agent => service::run(&app),
        Command::Generate { .. } | Command::Completions { .. } => Ok(()),
        Command::AuditLog(AuditLogCommand::Verify { file }) => {
            commands::audit::verify_log(Some(&app), file.as_deref(), &app.out)
        }
        Command::Harden { apply } => commands::harden::run(&app, *apply),
        Command::Key(KeyCommand::Export { output }) => commands::key::export(&app, output.as_deref()),
        Command::Key(KeyCommand::Import { file }) => commands::key::import(&app, file),
        Command::Fleet(FleetCommand::Status(args)) => commands::fleet::status(&app, args),
        Command::Fleet(FleetCommand::Serve(args)) => commands::fleet::serve(&app, args),
        Command::Fleet(FleetCommand::Report(args)) => commands::fleet::report(&app, args),
    }
}
