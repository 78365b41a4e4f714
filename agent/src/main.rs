//! `vaultline`: parse the command line, run the command, map the outcome to
//! a documented exit code. The engine is the `vaultline_agent` library; its
//! crate documentation is the map of the layers.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use vaultline_agent::cli::args::{Cli, LogFormat};
use vaultline_agent::cli::exit::{Exit, classify};
use vaultline_agent::cli::output::Output;

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
        log_json: cli.log_format == LogFormat::Json,
    };
    out.init_logging();
    match vaultline_agent::cli::run(&cli, out) {
        Ok(()) => Exit::Ok.into(),
        Err(err) => {
            let code = classify(&err);
            // (A closed stderr is no reason to panic either.)
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            code.into()
        }
    }
}
