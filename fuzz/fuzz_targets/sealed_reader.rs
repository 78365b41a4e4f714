//! Fuzzes `SealedReader::open` + `read_to_end` around one fixed valid object
//! (fixed master key and context, chunk size 1024, 3000-byte plaintext, fixed
//! salt: see `src/lib.rs`).
//!
//! Checks: opening and reading never panic; if `read_to_end` succeeds, the
//! plaintext equals the original plaintext; if it fails, the plaintext
//! released before the failure is a prefix of the original, and the error
//! carries a typed `vaultline_crypto::Error`.
//!
//! Input: the first byte picks the mode.
//! - Odd: the rest of the input is a whole sealed object, opened as is.
//! - Even: the rest mutates the fixed object. It is read as big-endian u16
//!   fields (missing bytes read as 0), applied in this order:
//!   1. `new_len` (0 = keep): truncate or extend to `(new_len - 1) % (len + 2049)`
//!      bytes, the extension being the original object read cyclically from
//!      offset `ext_from`;
//!   2. `src`, `dst`, `splice_len`: copy `splice_len` original bytes from `src`
//!      over the object at `dst` (clipped), to move, duplicate or drop chunks;
//!   3. then 3-byte edits to the end of the input: u16 offset (modulo the
//!      length) and a byte to XOR there.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use vaultline_crypto::{Error, SealedReader};
use vaultline_fuzz::{fixture, write_seeds_from_env};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> usize {
        usize::from(u16::from_be_bytes([self.u8(), self.u8()]))
    }
}

fn mutate(original: &[u8], data: &[u8]) -> Vec<u8> {
    let mut input = Input(data);
    let new_len = input.u16();
    let ext_from = input.u16();
    let (src, dst, splice_len) = (input.u16(), input.u16(), input.u16());

    let mut bytes = original.to_vec();
    if new_len != 0 {
        let target = (new_len - 1) % (original.len() + 2049);
        if target <= bytes.len() {
            bytes.truncate(target);
        } else {
            let extra = target - bytes.len();
            bytes.extend((0..extra).map(|i| original[(ext_from + i) % original.len()]));
        }
    }
    if splice_len != 0 && src < original.len() && dst < bytes.len() {
        let n = splice_len.min(original.len() - src).min(bytes.len() - dst);
        bytes[dst..dst + n].copy_from_slice(&original[src..src + n]);
    }
    while !input.0.is_empty() && !bytes.is_empty() {
        let at = input.u16() % bytes.len();
        bytes[at] ^= input.u8();
    }
    bytes
}

fn check(bytes: &[u8]) {
    let f = fixture();
    let Ok((_header, mut reader)) = SealedReader::open(bytes, &f.provider) else {
        return;
    };
    let mut out = Vec::new();
    match reader.read_to_end(&mut out) {
        Ok(n) => {
            assert_eq!(n, out.len());
            assert!(
                out == f.plaintext,
                "read succeeded with wrong plaintext ({} bytes, expected {})",
                out.len(),
                f.plaintext.len()
            );
        }
        Err(e) => {
            assert!(
                f.plaintext.starts_with(&out),
                "released {} bytes that are not a prefix of the plaintext before failing: {e}",
                out.len()
            );
            assert!(Error::from_io(&e).is_some(), "untyped read error: {e:?}");
        }
    }
}

fuzz_target!(
    init: {
        let f = fixture();
        let mut raw = vec![1u8];
        raw.extend_from_slice(&f.sealed);
        write_seeds_from_env(&[
            ("mutate-none", vec![0u8]),
            ("mutate-trailing", vec![0u8, 0x10, 0x00, 0x0b, 0x00]),
            ("raw-original", raw),
        ]);
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode & 1 == 1 {
            check(rest);
        } else {
            check(&mutate(&fixture().sealed, rest));
        }
    }
);
