//! Shared pieces of the vaultline fuzz targets: the one fixed, valid sealed
//! object they start from, and the optional seed writer.

use std::io::Write;
use std::path::Path;
use std::sync::LazyLock;

use vaultline_crypto::{
    DataKey, EncryptionContext, LocalKeyWrap, MasterKey, SealOptions, SealedWriter,
};

/// Plaintext length of the fixed object: two full 1 KiB chunks and a short final one.
pub const PLAINTEXT_LEN: usize = 3000;
/// Chunk size of the fixed object.
pub const CHUNK_SIZE: u32 = 1024;

/// A fixed, valid sealed object and what is needed to open it.
pub struct Fixture {
    /// The `local` provider holding the fixed master key.
    pub provider: LocalKeyWrap,
    /// The plaintext sealed in `sealed`.
    pub plaintext: Vec<u8>,
    /// The sealed object: header, binding tag, three chunks.
    pub sealed: Vec<u8>,
    /// Length of the header inside `sealed`.
    pub header_len: usize,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(build);

/// The fixed object, built once per process. Everything in it is fixed
/// (master key, data key, wrap nonce, salt, context, plaintext), so the
/// object is the same byte for byte in every run and reproducers replay
/// exactly.
pub fn fixture() -> &'static Fixture {
    &FIXTURE
}

fn build() -> Fixture {
    let provider = LocalKeyWrap::new(&MasterKey::from_bytes([0x4d; 32]));
    let context = EncryptionContext::new()
        .with("host", "fuzz-host")
        .and_then(|c| c.with("job", "fuzz"))
        .and_then(|c| c.with("kind", "archive"))
        .expect("fixed context is valid");
    let data_key = DataKey::from_bytes([0x44; 32]);
    // `wrap_with_nonce` instead of `KeyWrap::generate`: a random data key or
    // nonce would make the object differ between runs.
    let envelope = provider
        .wrap_with_nonce(&data_key, &context, [0x4e; 24])
        .expect("wrapping with a fixed nonce works");
    let plaintext: Vec<u8> = (0..PLAINTEXT_LEN)
        .map(|i| (i.wrapping_mul(31).wrapping_add(i >> 8)) as u8)
        .collect();
    let options = SealOptions {
        chunk_size: CHUNK_SIZE,
        salt: Some([0x53; 32]),
    };
    let mut writer = SealedWriter::with_options(Vec::new(), &data_key, envelope, context, &options)
        .expect("fixed options are valid");
    let header_len = writer.header().encoded_len();
    writer.write_all(&plaintext).expect("writing to a Vec works");
    let sealed = writer.finish().expect("finishing into a Vec works");
    Fixture {
        provider,
        plaintext,
        sealed,
        header_len,
    }
}

/// If `VAULTLINE_FUZZ_SEED_DIR` is set, writes `seeds` (name, bytes) into
/// that directory. Called from the targets' `init` blocks, so
/// `VAULTLINE_FUZZ_SEED_DIR=DIR cargo fuzz run TARGET DIR -- -runs=0`
/// fills DIR with seeds (they land in the corpus, which git ignores).
pub fn write_seeds_from_env(seeds: &[(&str, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("VAULTLINE_FUZZ_SEED_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the seed directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
