//! `vaultline`: parse the command line, run the command, map the outcome to
//! a documented exit code (see `exit`).
//!
//! The crate is organised by what each part does: `cli` (the command line),
//! `commands/*` (one module per subcommand), `backup` and `snapshot` (the
//! write and read pipelines), `archive` (walking and PAX tar), `manifest`,
//! `extract` (safe restore into a directory), `repo` (layout, marker,
//! sealed-object identity), `store/*` (object stores: local directory, S3),
//! `keys` (the local master key), `kms` (the AWS KMS key provider), `aws`
//! (the shared runtime, SDK clients, error descriptions), `hardening`
//! (bucket checks and `harden`), `audit_log` (the hash-chained audit
//! trail), `status` (run records and metrics), `service` (`vaultline
//! agent`), `lock` (one run per job), `pipe`, `output`, `exit`.

mod app;
mod archive;
mod audit_log;
mod aws;
mod backup;
mod changes;
mod cli;
mod commands;
mod exit;
mod extract;
mod frames;
mod hardening;
mod keys;
mod kms;
mod lock;
mod manifest;
mod output;
mod pipe;
mod repo;
mod retention;
mod service;
mod snapshot;
mod status;
mod store;
mod thaw;

use std::process::ExitCode;

use clap::Parser;

use crate::app::App;
use crate::cli::{AuditLogCommand, BackupCommand, Cli, Command, PolicyCommand};
use crate::exit::{Exit, classify};
use crate::output::Output;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
        verbose: cli.verbose,
        log_json: cli.log_format == cli::LogFormat::Json,
    };
    out.init_logging();
    match run(&cli, out) {
        Ok(()) => Exit::Ok.into(),
        Err(err) => {
            let code = classify(&err);
            eprintln!("error: {err:#}");
            code.into()
        }
    }
}

fn run(cli: &Cli, out: Output) -> anyhow::Result<()> {
    // Needs no configuration.
    if let Command::Generate { dir } = &cli.command {
        return commands::generate::run(dir);
    }
    let app = App::load(cli, out)?;
    match &cli.command {
        Command::Init => commands::init::run(&app),
        Command::Backup(BackupCommand::Now(args)) => commands::backup::run(&app, args),
        Command::Snapshots(args) => commands::snapshots::run(&app, args),
        Command::Restore(args) => commands::restore::run(&app, args),
        Command::Verify(args) => commands::verify::run(&app, args),
        Command::Forget(args) => commands::forget::run(&app, args),
        Command::Rewrap(args) => commands::rewrap::run(&app, args),
        Command::Policy(PolicyCommand::Iam { role }) => commands::policy::run(&app, *role),
        Command::Audit => commands::audit::run(&app),
        Command::Status => commands::status::run(&app),
        Command::Agent => service::run(&app),
        Command::Generate { .. } => Ok(()),
        Command::AuditLog(AuditLogCommand::Verify { file }) => {
            commands::audit::verify_log(&app, file.as_deref())
        }
        Command::Harden { apply } => commands::harden::run(&app, *apply),
    }
}
