//! Content-defined chunks: how a large file (or a stream of unknown size)
//! is cut, named and found again, so that a changed file costs only the
//! parts of it that changed.
//!
//! A file of at least [`CHUNKED_FILE`] bytes is cut with FastCDC (2020,
//! normalization level 1) into chunks of [`MIN`] to [`MAX`] bytes,
//! [`AVG`] on average, its gear table seeded from the job's secret. Each
//! chunk is named by BLAKE3 in keyed mode under the same secret, truncated
//! to 128 bits ([`ChunkId`]). The names live only in the host's local
//! record (the repository stores locations, never names), and without the
//! secret (`STATE/incremental/JOB.chunkkey`, 0600) neither a copy of the
//! record nor the bucket tells whether a host holds a given file.
//!
//! A chunk is stored once per chain: the [`ChunkIndex`] maps the names of
//! every chunk the parent snapshot's files use (from the local record) and
//! of every chunk this run stored to where it is. A chunk found there is
//! referred to; a new one is appended to this run's archive as a tar member
//! `PATH.vaultline-chunk/N` (docs/FORMAT.md §13).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use zeroize::Zeroizing;

use crate::repo::manifest::ChunkRef;

/// Files this large or larger are chunked (two average chunks: a smaller
/// file would mostly be one chunk anyway). Below it a changed file is
/// archived whole, as one member. At 8 MiB, logs of a few MiB that grow by
/// appends were stored whole every run, and the workload of bench/chunks.sh
/// stored 1.17× restic's bytes.
pub const CHUNKED_FILE: u64 = 1 << 20;
/// Smallest chunk (but the last of a file).
pub const MIN: usize = 128 << 10;
/// Average chunk size. A change of a few KiB inside a file costs about
/// one or two chunks: at 1 MiB (restic's average) the workload of
/// bench/chunks.sh stored 8.56 MB, at 512 KiB 5.86 MB.
pub const AVG: usize = 512 << 10;
/// Largest chunk (a manifest accepts up to `MAX_CHUNK`, 4 MiB).
pub const MAX: usize = 2 << 20;

/// A chunk's name: the first 128 bits of its keyed BLAKE3 hash.
pub type ChunkId = [u8; 16];

/// A job's chunking secret: seeds the cut points and keys the names.
pub struct ChunkKey(Zeroizing<[u8; 32]>);

impl ChunkKey {
    /// The job's key in `STATE/incremental/JOB.chunkkey`, made (random,
    /// 0600) when there is none. A lost key only costs deduplication
    /// against what was stored under the old one.
    pub fn load_or_create(state_dir: &Path, job: &str) -> Result<ChunkKey> {
        let dir = state_dir.join("incremental");
        let path = dir.join(format!("{job}.chunkkey"));
        crate::state::private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if let Ok(text) = read_private(&path) {
            let mut key = Zeroizing::new([0u8; 32]);
            if hex::decode_to_slice(text.trim(), &mut key[..]).is_ok() {
                return Ok(ChunkKey(key));
            }
            tracing::warn!(
                "{} is damaged; a new chunk key is made (no deduplication against older chunks)",
                path.display()
            );
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
        crate::state::write_atomic(&path, text.as_bytes(), crate::state::PRIVATE)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(ChunkKey(key))
    }

    /// A key for tests and benchmarks.
    pub fn fixed(bytes: [u8; 32]) -> ChunkKey {
        ChunkKey(Zeroizing::new(bytes))
    }

    /// The name of a chunk's content.
    pub fn id(&self, data: &[u8]) -> ChunkId {
        let hash = blake3::keyed_hash(&self.0, data);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        id
    }

    /// The gear-table seed for cut points.
    fn seed(&self) -> u64 {
        let mut s = [0u8; 8];
        s.copy_from_slice(&blake3::keyed_hash(&self.0, b"vaultline fastcdc seed").as_bytes()[..8]);
        u64::from_le_bytes(s)
    }

    /// Cuts `source` into chunks; each comes with its name.
    pub fn chunks<'k, R: Read + 'k>(
        &'k self,
        source: R,
    ) -> impl Iterator<Item = Result<(ChunkId, Vec<u8>), std::io::Error>> + 'k {
        fastcdc::v2020::StreamCDC::with_level_and_seed(
            source,
            MIN,
            AVG,
            MAX,
            fastcdc::v2020::Normalization::Level1,
            self.seed(),
        )
        .map(move |c| match c {
            Ok(c) => Ok((self.id(&c.data), c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Err(e),
            Err(other) => Err(std::io::Error::other(other.to_string())),
        })
    }
}

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey([redacted])")
    }
}

fn read_private(path: &Path) -> std::io::Result<Zeroizing<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// Where every known chunk is: those the parent snapshot's files use, and
/// those this run stored.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    known: HashMap<ChunkId, ChunkRef>,
}

impl ChunkIndex {
    /// An empty index (a full run).
    pub fn new() -> Self {
        ChunkIndex::default()
    }

    /// Where chunk `id` is, if known.
    pub fn get(&self, id: &ChunkId) -> Option<ChunkRef> {
        self.known.get(id).copied()
    }

    /// Remembers where chunk `id` is.
    pub fn insert(&mut self, id: ChunkId, at: ChunkRef) {
        self.known.entry(id).or_insert(at);
    }

    /// How many chunks are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let key = ChunkKey::fixed([9; 32]);
        let before = data(24 << 20, 7);
        let mut after = before.clone();
        after.splice(12 << 20..12 << 20, b"inserted in the middle".iter().copied());
        let ids = |d: &[u8]| -> Vec<ChunkId> { key.chunks(d).map(|c| c.unwrap().0).collect() };
        let (a, b) = (ids(&before), ids(&after));
        let shared = b.iter().filter(|id| a.contains(id)).count();
        assert!(a.len() >= 12, "{} chunks", a.len());
        assert!(shared + 2 >= b.len(), "{shared} of {} chunks shared", b.len());
        let total: usize = key.chunks(&after[..]).map(|c| c.unwrap().1.len()).sum();
        assert_eq!(total, after.len());
    }

    #[test]
    fn names_depend_on_the_key() {
        let d = data(1000, 3);
        assert_ne!(ChunkKey::fixed([1; 32]).id(&d), ChunkKey::fixed([2; 32]).id(&d));
        assert_eq!(ChunkKey::fixed([1; 32]).id(&d), ChunkKey::fixed([1; 32]).id(&d));
    }
}
