//! The tree listing of a run, in segments that later snapshots share.
//!
//! The entries of a snapshot, in walk order, are cut into *segments* of a
//! few thousand entries. Where a segment ends depends only on the paths
//! (after an entry whose path hashes to 0 modulo [`AVG_ENTRIES`], between
//! [`MIN_ENTRIES`] and [`MAX_ENTRIES`] entries), so an unchanged stretch of
//! the tree is cut the same way run after run. A segment whose entries are
//! exactly those of one of the parent's segments (every entry unchanged, in
//! the same places, none added or removed) is not written again: the new
//! manifest refers to the parent's copy. The others are written, each one
//! zstd frame, into the run's node pack (`HOST/JOB/nodes/SNAPSHOT.nodes`,
//! sealed like any object), created only when the first one is. A run that
//! changed nothing writes a manifest of references and no node pack.

use anyhow::Result;

use crate::repo::manifest::{EncodedPath, Entry, NodesRef, NodesWriter, SegmentRef, write_entry};
use crate::repo::store::PendingObject;

/// Average entries per segment (a power of two: the boundary mask).
pub const AVG_ENTRIES: u64 = 2048;
/// No boundary before this many entries.
pub const MIN_ENTRIES: u64 = 512;
/// A boundary at this many entries at the latest.
pub const MAX_ENTRIES: u64 = 16384;

/// FNV-1a, 64 bits: a fixed, stable hash of a path (boundaries must fall
/// in the same places in every version of vaultline).
fn path_hash(path: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// True when a segment of `count` entries ends after `path`.
pub fn boundary(path: &[u8], count: u64) -> bool {
    count >= MAX_ENTRIES || (count >= MIN_ENTRIES && path_hash(path) & (AVG_ENTRIES - 1) == 0)
}

/// The parent's segments, with the ordinal (position in the parent's
/// record) of each one's first entry.
#[derive(Debug, Default)]
pub struct Parent {
    segments: Vec<SegmentRef>,
    starts: Vec<u64>,
}

impl Parent {
    /// From the parent's segment list, in order.
    pub fn new(segments: Vec<SegmentRef>) -> Self {
        let mut starts = Vec::with_capacity(segments.len());
        let mut at = 0;
        for s in &segments {
            starts.push(at);
            at += s.entries;
        }
        Parent { segments, starts }
    }
}

/// A node pack being written, with its index in the node pack table.
pub type Pack = (NodesWriter<Box<dyn PendingObject>>, u32);

/// Where a new node pack goes: made on first use.
pub trait NodesSink {
    /// Starts the run's node pack; returns its writer and its table index.
    fn start(&mut self) -> Result<Pack>;
}

/// Cuts the run's entries into segments and writes the new ones.
pub struct TreeWriter {
    parent: Parent,
    lines: Vec<u8>,
    entries: u64,
    first: EncodedPath,
    /// The parent's segment this one may be a copy of, while it still may.
    candidate: Option<usize>,
    next_ordinal: u64,
    nodes: Option<Pack>,
    /// The segments so far (new or shared), in order.
    segments: Vec<SegmentRef>,
    /// Segments written by this run.
    pub written: u64,
}

impl TreeWriter {
    /// A writer sharing what it can with `parent`'s segments.
    pub fn new(parent: Parent) -> Self {
        TreeWriter {
            parent,
            lines: Vec::new(),
            entries: 0,
            first: EncodedPath::default(),
            candidate: None,
            next_ordinal: 0,
            nodes: None,
            segments: Vec::new(),
            written: 0,
        }
    }

    /// Adds the next entry; `unchanged` is its ordinal in the parent's
    /// record when the entry is the parent's, unchanged. Returns the
    /// segment reference when this entry ended a segment.
    pub fn push(
        &mut self,
        entry: &Entry,
        unchanged: Option<u64>,
        sink: &mut dyn NodesSink,
    ) -> Result<Option<SegmentRef>> {
        if self.entries == 0 {
            self.first = entry.path.clone();
            self.candidate = unchanged.and_then(|o| self.parent.starts.binary_search(&o).ok());
            self.next_ordinal = unchanged.map_or(0, |o| o + 1);
        } else if self.candidate.is_some() {
            if unchanged == Some(self.next_ordinal) {
                self.next_ordinal += 1;
            } else {
                self.candidate = None;
            }
        }
        write_entry(&mut self.lines, entry)?;
        self.entries += 1;
        if boundary(&entry.path.0, self.entries) {
            return self.flush(sink).map(Some);
        }
        Ok(None)
    }

    /// Ends the current segment: the parent's copy when it is one, else a
    /// new frame in the node pack.
    fn flush(&mut self, sink: &mut dyn NodesSink) -> Result<SegmentRef> {
        let shared = self
            .candidate
            .and_then(|k| self.parent.segments.get(k))
            .filter(|s| s.entries == self.entries && s.first == self.first)
            .cloned();
        let segment = match shared {
            Some(s) => s,
            None => {
                if self.nodes.is_none() {
                    self.nodes = Some(sink.start()?);
                }
                let (writer, index) = self
                    .nodes
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("no node pack"))?;
                let (offset, length) = writer.segment(&self.lines)?;
                self.written += 1;
                SegmentRef {
                    nodes: *index,
                    offset,
                    length,
                    entries: self.entries,
                    first: std::mem::take(&mut self.first),
                }
            }
        };
        self.lines.clear();
        self.entries = 0;
        self.candidate = None;
        self.segments.push(segment.clone());
        Ok(segment)
    }

    /// Ends the last segment; returns it (if any entries were left) and the
    /// node pack writer, when this run wrote one.
    pub fn finish(
        mut self,
        sink: &mut dyn NodesSink,
    ) -> Result<(Option<SegmentRef>, Option<Pack>, Vec<SegmentRef>)> {
        let last = if self.entries > 0 {
            Some(self.flush(sink)?)
        } else {
            None
        };
        Ok((last, self.nodes.take(), self.segments))
    }
}

/// Node pack table slots that `segments` use.
pub fn used_slots(segments: &[SegmentRef], table: &mut [Option<NodesRef>]) {
    let mut used = vec![false; table.len()];
    for s in segments {
        if let Some(u) = used.get_mut(s.nodes as usize) {
            *u = true;
        }
    }
    for (slot, used) in table.iter_mut().zip(used) {
        if !used {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_depend_on_paths_only() {
        let paths: Vec<Vec<u8>> = (0..50_000)
            .map(|i| format!("srv/data/f{i:06}").into_bytes())
            .collect();
        let cuts = |paths: &[Vec<u8>]| -> Vec<usize> {
            let mut out = Vec::new();
            let mut count = 0;
            for (i, p) in paths.iter().enumerate() {
                count += 1;
                if boundary(p, count) {
                    out.push(i);
                    count = 0;
                }
            }
            out
        };
        let a = cuts(&paths);
        assert!(a.len() > 10 && a.len() < 60, "{} segments", a.len());
        // One path inserted near the start: the cuts after the next boundary agree.
        let mut b_paths = paths.clone();
        b_paths.insert(100, b"srv/data/f000099a".to_vec());
        let b: Vec<usize> = cuts(&b_paths)
            .into_iter()
            .map(|i| if i > 100 { i - 1 } else { i })
            .collect();
        assert_eq!(a[1..], b[1..]);
    }
}
