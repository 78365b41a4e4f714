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

    /// A chunker cutting with this key's gear table.
    pub fn chunker(&self) -> Chunker {
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(self.seed());
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(AVG, fastcdc::v2020::Normalization::Level1);
        Chunker {
            buf: vec![0; WINDOW],
            start: 0,
            end: 0,
            eof: true,
            gear: gear.into_owned(),
            gear_ls: gear_ls.into_owned(),
            mask_s,
            mask_l,
        }
    }
}

/// Bytes the chunker holds: four largest chunks, so that keeping a whole
/// largest chunk in view moves at most a quarter of the window per three
/// quarters cut.
const WINDOW: usize = 4 * MAX;

/// Cuts sources into chunks, one after another, through one window
/// allocated once per run: a chunk is handed out as a slice of the window
/// (no copy), and bytes move only when the window's tail runs short of a
/// largest chunk. The cut points are FastCDC 2020's exactly (the `fastcdc`
/// crate's, which looks at most [`MAX`] bytes ahead), so they match those
/// of every earlier run.
pub struct Chunker {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// Starts on a new source.
    pub fn reset(&mut self) {
        (self.start, self.end, self.eof) = (0, 0, false);
    }

    /// The next chunk of `source` and its name under `key`, `None` at its
    /// end. Call [`Chunker::reset`] before the first chunk of a source.
    pub fn next_chunk(
        &mut self,
        key: &ChunkKey,
        source: &mut dyn Read,
    ) -> Option<std::io::Result<(ChunkId, &[u8])>> {
        // A largest chunk in view, unless the source ends before.
        if !self.eof && self.end - self.start < MAX {
            if self.buf.len() - self.start < MAX {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            while !self.eof && self.end < self.buf.len() {
                match source.read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // What was read but not cut is dropped with the
                        // source: nothing of it comes out after the error.
                        (self.start, self.end, self.eof) = (0, 0, true);
                        return Some(Err(e));
                    }
                }
            }
        }
        if self.start == self.end {
            return None;
        }
        let (_, len) = fastcdc::v2020::cut_gear(
            &self.buf[self.start..self.end],
            MIN,
            AVG,
            MAX,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        let data = &self.buf[self.start..self.start + len];
        self.start += len;
        Some(Ok((key.id(data), data)))
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
        let mut chunker = key.chunker();
        let mut ids =
            |d: &[u8]| -> Vec<ChunkId> { cut(&key, &mut chunker, d).into_iter().map(|c| c.0).collect() };
        let (a, b) = (ids(&before), ids(&after));
        let shared = b.iter().filter(|id| a.contains(id)).count();
        assert!(a.len() >= 12, "{} chunks", a.len());
        assert!(shared + 2 >= b.len(), "{shared} of {} chunks shared", b.len());
        let total: usize = cut(&key, &mut key.chunker(), &after[..])
            .iter()
            .map(|c| c.1.len())
            .sum();
        assert_eq!(total, after.len());
    }

    /// Every chunk of `source`, through a [`Chunker`].
    fn cut(key: &ChunkKey, chunker: &mut Chunker, mut source: impl Read) -> Vec<(ChunkId, Vec<u8>)> {
        chunker.reset();
        let mut out = Vec::new();
        while let Some(c) = chunker.next_chunk(key, &mut source) {
            let (id, data) = c.unwrap();
            out.push((id, data.to_vec()));
        }
        out
    }

    /// A reader that hands out at most `step` bytes a call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_chunker_cuts_where_fastcdc_s_stream_chunker_does() {
        let key = ChunkKey::fixed([5; 32]);
        let mut chunker = key.chunker();
        let big = data(37 << 20, 11);
        for len in [
            0,
            1,
            MIN - 1,
            MIN,
            MIN + 1,
            MAX,
            MAX + 1,
            3 * MAX + 7,
            WINDOW + 5,
            big.len(),
        ] {
            let d = &big[..len];
            let reference: Vec<(ChunkId, Vec<u8>)> = fastcdc::v2020::StreamCDC::with_level_and_seed(
                d,
                MIN,
                AVG,
                MAX,
                fastcdc::v2020::Normalization::Level1,
                key.seed(),
            )
            .map(|c| {
                let c = c.unwrap();
                (key.id(&c.data), c.data)
            })
            .collect();
            assert_eq!(cut(&key, &mut chunker, d), reference, "{len} bytes");
            assert_eq!(
                cut(&key, &mut chunker, Trickle(d, 70_001)),
                reference,
                "{len} bytes, trickled"
            );
        }
        // All zeroes: every chunk is a largest one but the last.
        let zeroes = vec![0u8; 5 * MAX + 3];
        let sizes: Vec<usize> = cut(&key, &mut chunker, &zeroes[..])
            .iter()
            .map(|c| c.1.len())
            .collect();
        assert_eq!(sizes, [MAX, MAX, MAX, MAX, MAX, 3]);
    }

    #[test]
    fn a_read_error_is_handed_on_and_ends_the_source() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("the disk said no"));
                }
                let n = self.0.min(buf.len());
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let key = ChunkKey::fixed([5; 32]);
        let mut chunker = key.chunker();
        chunker.reset();
        let mut source = Failing(3 * MAX);
        let first = chunker.next_chunk(&key, &mut source).unwrap();
        assert_eq!(first.unwrap_err().to_string(), "the disk said no");
        assert!(
            chunker.next_chunk(&key, &mut source).is_none(),
            "the source ended"
        );

        // After a window's worth: the chunks cut so far come out first,
        // each whole, then the error, then nothing.
        chunker.reset();
        let mut source = Failing(WINDOW + MAX + 3);
        let (mut cut, mut failed) = (0, None);
        while let Some(c) = chunker.next_chunk(&key, &mut source) {
            match c {
                Ok((_, data)) => {
                    assert_eq!(data.len(), MAX, "all sevens: largest chunks");
                    cut += data.len();
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        assert_eq!(failed.as_deref(), Some("the disk said no"));
        // The window filled once (4 largest chunks), then the refill failed.
        assert_eq!(cut, WINDOW);
    }

    #[test]
    fn names_depend_on_the_key() {
        let d = data(1000, 3);
        assert_ne!(ChunkKey::fixed([1; 32]).id(&d), ChunkKey::fixed([2; 32]).id(&d));
        assert_eq!(ChunkKey::fixed([1; 32]).id(&d), ChunkKey::fixed([1; 32]).id(&d));
    }
}
