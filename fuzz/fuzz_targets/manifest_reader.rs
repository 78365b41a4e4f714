//! Fuzzes the manifest reader the way a restore uses it: sealed manifest
//! bytes → `SnapshotReader::open` (authenticate, decompress, parse every
//! line, check the archive table and the end record) → `plan` (which
//! frames of which archives a selection needs).
//!
//! Input: the first byte picks the mode. Even: the rest is the manifest's
//! plaintext (JSON lines), compressed by the target. Odd: the rest is the
//! zstd stream itself. Either way it is sealed under the fixed key as the
//! fixed snapshot's manifest (`src/lib.rs`, module `manifest`), so every
//! input reaches the parser.
//!
//! Checks: nothing panics, and memory stays within libFuzzer's RSS limit
//! whatever the manifest claims (run with `-rss_limit_mb=…`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultline_fuzz::manifest::{check, valid_plaintext};
use vaultline_fuzz::write_seeds_from_env;

fuzz_target!(
    init: {
        let mut seed = vec![0u8];
        seed.extend(valid_plaintext());
        write_seeds_from_env(&[("valid-manifest", seed)]);
    },
    |data: &[u8]| check(data)
);
