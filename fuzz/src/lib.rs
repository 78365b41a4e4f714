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

/// The manifest reader's fixture and check (target `manifest_reader`).
pub mod manifest {
    use std::io::Write;
    use std::sync::{Arc, LazyLock};

    use vaultline_agent::pipeline::snapshot::SnapshotReader;
    use vaultline_agent::repo::store::memory::MemoryStore;
    use vaultline_agent::repo::{Kind, Repo, SnapshotRef};
    use vaultline_crypto::{DataKey, EncryptionContext, LocalKeyWrap, MasterKey, SealOptions, SealedWriter};

    /// Host, job and snapshot the fuzzed manifest claims to be.
    pub const HOST: &str = "fuzz-host";
    /// The job.
    pub const JOB: &str = "fuzz";
    /// The snapshot id.
    pub const SNAPSHOT: &str = "20261122T103000Z-1a2b3c4d";

    /// The fixed key and the manifest's name and context.
    pub struct Fixture {
        /// The `local` provider with a fixed master key.
        pub provider: LocalKeyWrap,
        /// The manifest's object name.
        pub name: String,
        /// Its encryption context.
        pub context: EncryptionContext,
    }

    static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
        let repo = Repo::new(Arc::new(MemoryStore::new()), "");
        let name = repo.manifest_name(HOST, JOB, SNAPSHOT);
        let context = repo
            .context(HOST, JOB, SNAPSHOT, Kind::Manifest, &name)
            .expect("fixed context is valid");
        Fixture {
            provider: LocalKeyWrap::new(&MasterKey::from_bytes([0x4d; 32])),
            name,
            context,
        }
    });

    /// The fixture, built once per process.
    pub fn fixture() -> &'static Fixture {
        &FIXTURE
    }

    /// Seals `compressed` (a manifest's zstd stream) as the fixed manifest,
    /// deterministically (fixed data key, wrap nonce and salt).
    pub fn seal(compressed: &[u8]) -> Vec<u8> {
        let f = fixture();
        let data_key = DataKey::from_bytes([0x44; 32]);
        let envelope = f
            .provider
            .wrap_with_nonce(&data_key, &f.context, [0x4e; 24])
            .expect("wrapping with a fixed nonce works");
        let options = SealOptions {
            chunk_size: 4096,
            salt: Some([0x53; 32]),
        };
        let mut w = SealedWriter::with_options(Vec::new(), &data_key, envelope, f.context.clone(), &options)
            .expect("fixed options are valid");
        w.write_all(compressed).expect("writing to a Vec works");
        w.finish().expect("finishing into a Vec works")
    }

    /// A valid manifest's plaintext (JSON lines, before compression): a
    /// directory, two files in one archive, a symlink, a hard link, a
    /// deleted path, the archive table and the end record.
    pub fn valid_plaintext() -> Vec<u8> {
        let header = format!(
            r#"{{"vaultline_manifest":2,"snapshot":"{SNAPSHOT}","host":"{HOST}","job":"{JOB}","parent":null,"chain":0,"full_started":"2026-11-22T10:30:00Z","started":"2026-11-22T10:30:00Z","paths":["/a"]}}"#
        );
        let object = format!("{HOST}/{JOB}/archives/{SNAPSHOT}/0.archive");
        let lines = [
            header,
            r#"{"path":"a","type":"dir","mode":493,"uid":0,"gid":0,"mtime":1700000000}"#.into(),
            r#"{"path":"a/f","type":"file","size":5,"mode":420,"uid":0,"gid":0,"mtime":1700000000,"linked":true,"archive":0,"offset":512}"#.into(),
            r#"{"path":"a/g","type":"file","size":70000,"mode":420,"uid":0,"gid":0,"mtime":1700000000,"archive":0,"offset":1536}"#.into(),
            r#"{"path":"a/l","type":"symlink","mode":511,"uid":0,"gid":0,"mtime":1700000000,"target":"f"}"#.into(),
            r#"{"path":"a/h","type":"hardlink","mode":420,"uid":0,"gid":0,"mtime":1700000000,"target":"a/f"}"#.into(),
            r#"{"deleted":"a/old"}"#.into(),
            format!(
                r#"{{"archives":[{{"object":"{object}","snapshot":"{SNAPSHOT}","envelope":{{"provider":"local","key_id":"k","wrapped":"00"}},"size":9000,"plain_size":73216,"frame_size":4194304,"frames":[8900]}}]}}"#
            ),
            r#"{"end":{"finished":"2026-11-22T10:30:01Z","files":2,"dirs":1,"symlinks":1,"hardlinks":1,"bytes":70005,"skipped":0,"archived_files":2,"archived_bytes":70005,"reused":0,"deleted":1}}"#.into(),
        ];
        let mut out = lines.join("\n").into_bytes();
        out.push(b'\n');
        out
    }

    /// The check: the first byte picks the mode, even = the rest is a
    /// manifest's plaintext (compressed here), odd = the rest is its zstd
    /// stream as is. The result is sealed as the fixed manifest, opened
    /// by [`SnapshotReader::open`] and planned twice (everything; paths
    /// under `a/`). Nothing may panic; every failure must be an error.
    pub fn check(data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let compressed = if mode & 1 == 0 {
            match zstd::bulk::compress(rest, 1) {
                Ok(c) => c,
                Err(_) => return,
            }
        } else {
            rest.to_vec()
        };
        let f = fixture();
        let store = MemoryStore::new();
        let sealed = seal(&compressed);
        let size = sealed.len() as u64;
        store.insert(&f.name, sealed);
        let repo = Repo::new(Arc::new(store), "");
        let snapshot = SnapshotRef {
            host: HOST.into(),
            job: JOB.into(),
            id: SNAPSHOT.into(),
            manifest_size: size,
            recorded: None,
        };
        if let Ok(reader) = SnapshotReader::open(&repo, &f.provider, snapshot) {
            let _ = reader.plan(&mut |_| true);
            let _ = reader.plan(&mut |e| e.path.0.starts_with(b"a/"));
        }
    }
}
