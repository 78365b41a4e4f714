//! One module per subcommand. Each takes the loaded [`App`](crate::cli::app::App)
//! and its parsed arguments, does the work, prints its result (text or
//! `--json`), and returns an error whose chain decides the exit code.

pub mod audit;
pub mod backup;
pub mod fleet;
pub mod forget;
pub mod generate;
pub mod harden;
pub mod init;
pub mod key;
pub mod ls;
pub mod policy;
pub mod restore;
pub mod rewrap;
pub mod snapshots;
pub mod status;
pub mod verify;
