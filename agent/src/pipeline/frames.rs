//! Archive compression in independent zstd frames, for ranged reads.
//!
//! An archive's tar stream is cut into frames of [`FRAME_SIZE`] bytes (the
//! last one shorter), and each frame is compressed on its own as a complete
//! zstd frame. Concatenated, the frames are an ordinary zstd stream (`zstd
//! -d` reads it); separately, any frame can be decompressed without the ones
//! before it. The manifest records each frame's compressed length, so the
//! tar bytes at plain offset `p` are found by decompressing from the start
//! of frame `p / FRAME_SIZE`, whose compressed offset is the sum of the
//! lengths before it (see docs/FORMAT.md, "Frames and the index").
//!
//! Frames are compressed in parallel by a small pool of worker threads (one
//! zstd context each) and written out in order, so compression keeps all
//! cores busy while memory stays at a few frames per worker.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::repo::manifest::Frames;

/// Plain (tar) bytes per frame. Smaller frames make single-file restores
/// fetch less and cost compression ratio; 4 MiB keeps the ratio within a
/// fraction of a percent of one long frame at the default level (measured
/// in bench/incremental.sh).
pub const FRAME_SIZE: u64 = 4 << 20;

/// A finished frame: its number, its compressed bytes (in the output
/// buffer it was given) and its plain buffer, both for reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

/// A frame to compress: its number, its plain bytes and a buffer for the
/// compressed ones.
type Job = (u64, Vec<u8>, Vec<u8>);

/// Room for a compressed frame: zstd's bound for [`FRAME_SIZE`] bytes.
fn out_capacity() -> usize {
    zstd::zstd_safe::compress_bound(FRAME_SIZE as usize)
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

/// Compresses a stream into independent frames, written to `out` in order.
pub struct FrameWriter<W: Write> {
    out: W,
    level: i32,
    buf: Vec<u8>,
    frames: Frames,
    pool: Option<Pool>,
    /// Frames handed to the pool, and the next one to write out.
    submitted: u64,
    written: u64,
    /// Compressed frames that finished ahead of their turn.
    ready: BTreeMap<u64, Vec<u8>>,
    /// Plain and compressed buffers to use again: a run allocates a few
    /// frames' worth once, rather than two 4 MiB buffers a frame (freed on
    /// another thread than the one that allocated them, which allocators
    /// hold on to).
    spare: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    max_in_flight: u64,
}

impl<W: Write> FrameWriter<W> {
    /// Frames at zstd `level`, compressed by `threads` workers (1: inline).
    pub fn new(out: W, level: i32, threads: usize) -> io::Result<Self> {
        let pool = if threads > 1 {
            let (jobs, rx) = sync_channel::<Job>(threads);
            let rx = Arc::new(Mutex::new(rx));
            let (tx, done) = sync_channel::<Done>(threads * 2);
            let mut workers = Vec::new();
            for _ in 0..threads {
                let (rx, tx) = (Arc::clone(&rx), tx.clone());
                workers.push(std::thread::spawn(move || {
                    let mut zstd = match zstd::bulk::Compressor::new(level) {
                        Ok(z) => z,
                        Err(e) => {
                            let e =
                                io::Error::new(e.kind(), format!("cannot set up zstd level {level}: {e}"));
                            let _ = tx.send((u64::MAX, Err(e), Vec::new()));
                            return;
                        }
                    };
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((seq, plain, mut out)) = job else { return };
                        // A panic must not leave the writer waiting for a
                        // frame that never comes: it becomes an error.
                        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            out.clear();
                            zstd.compress_to_buffer(&plain, &mut out).map(|_| out)
                        }))
                        .unwrap_or_else(|_| Err(io::Error::other("a compression worker panicked")));
                        if tx.send((seq, out, plain)).is_err() {
                            return;
                        }
                    }
                }));
            }
            Some(Pool {
                jobs: Some(jobs),
                done,
                workers,
            })
        } else {
            None
        };
        Ok(FrameWriter {
            out,
            level,
            buf: Vec::with_capacity(FRAME_SIZE as usize),
            frames: Frames {
                frame_size: FRAME_SIZE,
                ..Frames::default()
            },
            pool,
            submitted: 0,
            written: 0,
            ready: BTreeMap::new(),
            spare: Vec::new(),
            spare_out: Vec::new(),
            max_in_flight: threads as u64 * 2,
        })
    }

    /// Plain bytes taken so far.
    pub fn position(&self) -> u64 {
        self.frames.plain_size
    }

    fn emit(&mut self, compressed: &[u8]) -> io::Result<()> {
        let len = u32::try_from(compressed.len())
            .map_err(|_| io::Error::other("a compressed frame exceeds 4 GiB"))?;
        self.out.write_all(compressed)?;
        self.frames.lengths.push(len);
        self.written += 1;
        Ok(())
    }

    /// Takes one finished frame from the pool and writes out all that are in turn.
    fn collect_one(&mut self) -> io::Result<()> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let (seq, result, mut plain) = pool
            .done
            .recv()
            .map_err(|_| io::Error::other("a compression worker stopped unexpectedly"))?;
        let compressed = result?;
        plain.clear();
        self.spare.push(plain);
        self.ready.insert(seq, compressed);
        while let Some(c) = self.ready.remove(&self.written) {
            self.emit(&c)?;
            self.spare_out.push(c);
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_SIZE as usize));
        let mut plain = std::mem::replace(&mut self.buf, next);
        if self.pool.is_none() {
            let compressed = zstd::bulk::compress(&plain, self.level)?;
            self.submitted += 1;
            self.emit(&compressed)?;
            plain.clear();
            self.spare.push(plain);
            return Ok(());
        }
        while self.submitted - self.written >= self.max_in_flight {
            self.collect_one()?;
        }
        let out = self
            .spare_out
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(out_capacity()));
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| io::Error::other("compression pool closed"))?;
        let sent = pool
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((self.submitted, plain, out)).is_ok());
        if !sent {
            // Every worker is gone: report why, if one said.
            return Err(match pool.done.try_recv() {
                Ok((_, Err(e), _)) => e,
                _ => io::Error::other("the compression workers stopped unexpectedly"),
            });
        }
        self.submitted += 1;
        Ok(())
    }

    /// Compresses what is left and returns the output and the frame table.
    pub fn finish(mut self) -> io::Result<(W, Frames)> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        while self.written < self.submitted {
            self.collect_one()?;
        }
        self.out.flush()?;
        Ok((self.out, self.frames))
    }
}

impl Drop for Pool {
    /// Closing the job queue ends the workers; they are joined so none
    /// outlives the archive it worked for.
    /// (Results never block a worker: at most `max_in_flight` frames are
    /// out, and the result queue holds that many.)
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FRAME_SIZE as usize - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.frames.plain_size += n as u64;
        if self.buf.len() == FRAME_SIZE as usize {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                if i % 3 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    b"abcdefgh"[i % 8]
                }
            })
            .collect()
    }

    #[test]
    fn frames_decode_as_one_stream_and_each_on_its_own() {
        // More frames than the pool keeps in flight (2 per worker), so
        // plain and compressed buffers are used again.
        let data = sample(8 * FRAME_SIZE as usize + 12345);
        for threads in [1, 3] {
            let mut w = FrameWriter::new(Vec::new(), 3, threads).unwrap();
            for piece in data.chunks(100_000) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.position(), data.len() as u64);
            let (out, frames) = w.finish().unwrap();
            assert_eq!(frames.lengths.len(), 9, "threads {threads}");
            assert_eq!(frames.plain_size, data.len() as u64);
            let mut all = Vec::new();
            zstd::stream::read::Decoder::new(&out[..])
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, data, "threads {threads}");
            let starts = frames.starts();
            assert_eq!(*starts.last().unwrap(), out.len() as u64);
            // Frame 2 alone, and frames 2.. to the end.
            let f2 = &out[starts[2] as usize..starts[3] as usize];
            let plain = zstd::bulk::decompress(f2, FRAME_SIZE as usize).unwrap();
            let lo = 2 * FRAME_SIZE as usize;
            assert_eq!(plain, &data[lo..lo + FRAME_SIZE as usize]);
            let mut tail = Vec::new();
            zstd::stream::read::Decoder::new(&out[starts[2] as usize..])
                .unwrap()
                .read_to_end(&mut tail)
                .unwrap();
            assert_eq!(tail, &data[lo..]);
        }
    }
}
