//! `vaultline`: parse the command line, run the command, map the outcome to
//! a documented exit code. The engine is the `vaultline_agent` library; its
//! crate documentation is the map of the layers.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use vaultline_agent::cli::args::{Cli, LogFormat};
use vaultline_agent::cli::exit::{Exit, classify};
use vaultline_agent::cli::output::Output;

/// mimalloc, not the C library's allocator: the walk and the record's
/// reader and writer threads hand millions of small allocations to each
/// other, which glibc serialises on its arena locks (a no-change run over
/// a million files: 2.9 s with glibc, 2.0 s with mimalloc; docs/FORMAT.md
/// §16.1).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc backs its heaps with transparent huge pages where the
    // kernel allows them, and a page of 2 MiB is resident as soon as one
    // byte of it is touched: a restore of the 1 GiB benchmark tree peaked
    // at 85 MiB with them and 51 MiB without (a backup 92 and 81 MiB).
    // Memory is what an agent on someone's server must not take; this
    // flag is the process's (and its children's, such as a hook), nothing
    // else's. Failing to set it costs only memory.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(mut e) => {
            drop_value_tip(&mut e);
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
            if let Some(hint) = vaultline_agent::cli::exit::hint(&err) {
                let _ = writeln!(std::io::stderr(), "{hint}");
            }
            code.into()
        }
    }
}

/// clap suggests `-- --flag` for an unknown flag, to pass it as a value;
/// no vaultline argument takes a value starting with `--`, so the tip only
/// misleads (`backup now -- --dry-run` would look for a job of that name).
fn drop_value_tip(e: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::StyledStrs(tips)) = e.get(ContextKind::Suggested) {
        let kept: Vec<_> = tips
            .iter()
            .filter(|t| !t.to_string().contains("as a value, use"))
            .cloned()
            .collect();
        if kept.is_empty() {
            e.remove(ContextKind::Suggested);
        } else {
            e.insert(ContextKind::Suggested, ContextValue::StyledStrs(kept));
        }
    }
}
