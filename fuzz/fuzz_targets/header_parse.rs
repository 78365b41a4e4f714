//! Fuzzes `Header::parse` with arbitrary bytes.
//!
//! Checks: parsing never panics; and when it succeeds, the consumed length
//! equals `encoded_len()`, `to_bytes()` gives back exactly the consumed
//! input bytes, and those bytes re-parse to an equal header of the same
//! length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultline_crypto::Header;
use vaultline_fuzz::{fixture, write_seeds_from_env};

fuzz_target!(
    init: {
        let f = fixture();
        write_seeds_from_env(&[
            ("header", f.sealed[..f.header_len].to_vec()),
            ("object", f.sealed.clone()),
        ]);
    },
    |data: &[u8]| {
        let Ok((header, used)) = Header::parse(data) else {
            return;
        };
        assert!(used <= data.len(), "consumed {used} of {} bytes", data.len());
        assert_eq!(header.encoded_len(), used, "encoded_len differs from the consumed length");
        let bytes = header.to_bytes();
        assert_eq!(bytes.len(), used, "to_bytes length differs from the consumed length");
        assert!(bytes == data[..used], "to_bytes differs from the bytes it was parsed from");
        let (again, used_again) = match Header::parse(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => panic!("re-encoded header does not parse: {e}"),
        };
        assert_eq!(used_again, bytes.len(), "re-parse consumed a different length");
        assert!(again == header, "re-parsed header differs: {again:?} vs {header:?}");
    }
);
