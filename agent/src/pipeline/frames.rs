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
//! cores busy while memory stays at a few frames per worker. With a pool,
//! the writing out (the sealing writer: encryption and the object's writes,
//! a sixth of a full backup's CPU) has a thread of its own too, so the
//! thread feeding the frames (the walk) does not wait on it.

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

/// Where compressed frames go: written here, or handed to the writing
/// thread, which gives each buffer back once written.
enum Out<W> {
    Here(Option<W>),
    Away {
        frames: Option<SyncSender<Vec<u8>>>,
        back: Receiver<Vec<u8>>,
        thread: Option<JoinHandle<io::Result<W>>>,
    },
}

impl<W: Write + Send + 'static> Out<W> {
    fn away(mut out: W) -> io::Result<Self> {
        let (frames, rx) = sync_channel::<Vec<u8>>(2);
        let (give_back, back) = std::sync::mpsc::channel();
        let thread =
            std::thread::Builder::new()
                .name("frame-writer".into())
                .spawn(move || -> io::Result<W> {
                    for frame in rx {
                        out.write_all(&frame)?;
                        let _ = give_back.send(frame);
                    }
                    Ok(out)
                })?;
        Ok(Out::Away {
            frames: Some(frames),
            back,
            thread: Some(thread),
        })
    }
}

impl<W> Out<W> {
    /// The writing thread's outcome (once it ended).
    fn join(thread: &mut Option<JoinHandle<io::Result<W>>>) -> io::Result<W> {
        match thread.take().map(JoinHandle::join) {
            Some(Ok(done)) => done,
            _ => Err(io::Error::other("the frame writer stopped unexpectedly")),
        }
    }

    /// Writes `frame`; gives it back when it is free already.
    fn write(&mut self, frame: Vec<u8>) -> io::Result<Option<Vec<u8>>>
    where
        W: Write,
    {
        match self {
            Out::Here(out) => {
                out.as_mut().ok_or_else(finished)?.write_all(&frame)?;
                Ok(Some(frame))
            }
            Out::Away { frames, thread, .. } => {
                if frames.as_ref().is_some_and(|f| f.send(frame).is_ok()) {
                    return Ok(None);
                }
                // It stopped: its error says why.
                *frames = None;
                Err(Self::join(thread)
                    .err()
                    .unwrap_or_else(|| io::Error::other("the frame writer stopped")))
            }
        }
    }

    /// A written buffer, if one came back.
    fn reuse(&self) -> Option<Vec<u8>> {
        match self {
            Out::Here(_) => None,
            Out::Away { back, .. } => back.try_recv().ok(),
        }
    }

    /// Everything written: the writer back.
    fn finish(&mut self) -> io::Result<W> {
        match self {
            Out::Here(out) => out.take().ok_or_else(finished),
            Out::Away { frames, thread, .. } => {
                *frames = None;
                Self::join(thread)
            }
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("the frame writer was finished already")
}

impl<W> Drop for Out<W> {
    /// Frames handed over are written (then the writer dropped: an object
    /// not committed is discarded) before the frame writer is gone.
    fn drop(&mut self) {
        if let Out::Away { frames, thread, .. } = self {
            *frames = None;
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Compresses a stream into independent frames, written to `out` in order.
pub struct FrameWriter<W: Write> {
    out: Out<W>,
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

impl<W: Write + Send + 'static> FrameWriter<W> {
    /// Frames at zstd `level`, compressed by `threads` workers and written
    /// out by a thread of its own (1: all inline).
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
            out: if pool.is_some() {
                Out::away(out)?
            } else {
                Out::Here(Some(out))
            },
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
}

impl<W: Write> FrameWriter<W> {
    /// Plain bytes taken so far.
    pub fn position(&self) -> u64 {
        self.frames.plain_size
    }

    /// Writes out the next frame in turn.
    fn emit(&mut self, compressed: Vec<u8>) -> io::Result<()> {
        let len = u32::try_from(compressed.len())
            .map_err(|_| io::Error::other("a compressed frame exceeds 4 GiB"))?;
        if let Some(free) = self.out.write(compressed)? {
            self.spare_out.push(free);
        }
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
            self.emit(c)?;
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
            self.emit(compressed)?;
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
            .or_else(|| self.out.reuse())
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
        let mut out = self.out.finish()?;
        out.flush()?;
        Ok((out, self.frames))
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

    /// A writer that takes `left` bytes, then fails.
    struct Full {
        left: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::other("no space left on the device"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_object_write_is_the_error_whether_inline_or_on_the_writing_thread() {
        let data = sample(6 * FRAME_SIZE as usize);
        for threads in [1, 2] {
            let mut w = FrameWriter::new(Full { left: 1 << 20 }, 3, threads).unwrap();
            let wrote = data.chunks(1 << 20).try_for_each(|piece| w.write_all(piece));
            let err = match wrote {
                Err(e) => e,
                Ok(()) => w.finish().map(|_| ()).unwrap_err(),
            };
            assert_eq!(
                err.to_string(),
                "no space left on the device",
                "threads {threads}"
            );
        }
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
