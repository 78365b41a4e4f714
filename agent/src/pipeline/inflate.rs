//! Decompressing an archive's frames in parallel, for restore and verify.
//!
//! An archive is a sequence of independent zstd frames whose compressed
//! lengths the manifest lists (docs/FORMAT.md §13.1), so a reader need not
//! decompress them one after another, and its sealed chunks need not be
//! opened in order either, since each authenticates at its own index. One
//! thread per archive (the producer) reads the raw sealed chunks each
//! needed frame lies in (a chunk two frames share goes to both) and hands
//! them on ([`FrameFeed`]); a pool of [`Inflaters`] shared by all archives
//! of a read authenticates and decrypts them where they lie
//! ([`SealedFrame`], [`vaultline_crypto::open_in_place`]) and decompresses
//! each frame whole into its own buffer, so decryption and decompression
//! run on every core; the consuming thread takes the frames back in order
//! ([`FrameStream`], a `Read` of the tar stream). The worker of a frame in
//! the object's final chunk reads on to the object's authenticated end, so
//! truncation and trailing data fail as in an ordered read. This holds for
//! a whole archive and for the runs of frames a partial read needs.
//!
//! Memory is bounded by *slots* and *inputs*. A slot holds one frame's
//! plain bytes, and each archive gets a fixed number of them: the producer
//! waits for a free slot before it reads a frame, and the consumer frees a
//! slot when it has read all of that frame, so at most `slots` frames of an
//! archive are in memory, whatever its size. An input holds what was read
//! for one frame until a worker has decompressed it; there is one per
//! worker (two at least), shared by every archive of the read. Decompressing a whole frame
//! into a buffer of exactly its size needs no zstd window and no copy out
//! of one, unlike a streaming decoder.
//!
//! Failures keep the pipe's conventions ([`crate::pipeline::pipe`]): when
//! the consumer stops, the producer's next frame fails with `BrokenPipe`;
//! when the producer stops without [`FrameFeed::finish`], the consumer's
//! read fails with `UnexpectedEof` once the frames already sent are read.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::Scope;

use vaultline_crypto::{DataKey, Header};

/// One frame's plain bytes, in memory from its decompression until the
/// consumer has read them all.
#[derive(Default)]
struct Slot {
    plain: Vec<u8>,
}

/// The buffers that hold what producers read for a frame (its compressed
/// bytes, or the sealed chunks holding them, which a worker authenticates
/// and decrypts where they lie) until it is decompressed: one per worker
/// (two at least), shared by the archives of a read, so that a chain of many archives
/// holds no more of them than a single archive. Workers keep no buffer of
/// their own.
struct Inputs {
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
}

impl Inputs {
    fn new(count: usize) -> Arc<Inputs> {
        Arc::new(Inputs {
            free: Mutex::new((0..count).map(|_| Vec::new()).collect()),
            returned: Condvar::new(),
        })
    }

    /// Waits for a free buffer. Every taken buffer comes back (an
    /// [`Input`] returns it when dropped, wherever that is), and a worker
    /// returns one after each frame whatever happens, so the wait ends.
    fn take(pool: &Arc<Inputs>) -> Input {
        // Nothing panics holding the lock (a push, a pop, a wait): a
        // poisoned lock still guards a sound list.
        let mut free = pool.free.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(buf) = free.pop() {
                return Input {
                    buf,
                    pool: Arc::clone(pool),
                };
            }
            free = pool.returned.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A buffer of [`Inputs`], back in the pool when dropped.
struct Input {
    buf: Vec<u8>,
    pool: Arc<Inputs>,
}

impl Drop for Input {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.push(std::mem::take(&mut self.buf));
        self.pool.returned.notify_one();
    }
}

struct Job {
    seq: u64,
    /// Plain bytes the frame table says the frame holds.
    expect: usize,
    input: Input,
    slot: Slot,
    /// Where the frame lies in its sealed chunks, when the worker opens them.
    sealed: Option<SealedFrame>,
    reply: Sender<Reply>,
}

/// A sealed object's header and data key, shared by the workers opening
/// its chunks.
pub struct SealedObject {
    /// The object's header (checked: commitment and MAC; the binding tag
    /// too when the object is read from its start).
    pub header: Header,
    /// Its data key.
    pub key: DataKey,
}

/// Where one frame's compressed bytes lie in the sealed chunks read for it.
pub struct SealedFrame {
    /// The object.
    pub object: Arc<SealedObject>,
    /// Index of the first chunk read.
    pub first_chunk: u64,
    /// The chunk after the last one read; `None`: the chunks go to the
    /// object's final chunk, whose end the worker checks.
    pub end_chunk: Option<u64>,
    /// Plaintext bytes of the first chunk before the frame.
    pub skip: usize,
    /// Compressed length of the frame.
    pub len: usize,
    /// True for the archive's last frame: nothing may follow it.
    pub last: bool,
}

enum Reply {
    Frame(u64, io::Result<()>, Slot),
    End,
}

/// The decompression workers of one read, shared by its archives. Dropping
/// every handle (the read's and its producers') ends them.
#[derive(Clone)]
pub struct Inflaters {
    jobs: Sender<Job>,
    inputs: Arc<Inputs>,
}

impl Inflaters {
    /// Starts `workers` threads in `scope`, each refusing frames that ask
    /// for a window over `2^window_log` bytes.
    pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, workers: usize, window_log: u32) -> Inflaters {
        let (jobs, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = workers.max(1);
        for _ in 0..workers {
            let rx = Arc::clone(&rx);
            scope.spawn(move || work(&rx, window_log));
        }
        Inflaters {
            jobs,
            // With one worker, a second buffer lets the next frame be read
            // while one is decompressed.
            inputs: Inputs::new(workers.max(2)),
        }
    }

    /// The two ends for one archive with `slots` frames in flight at most,
    /// `frames` frames in all; `object` names it in errors.
    pub fn archive(&self, slots: usize, frames: u64, object: &str) -> (FrameFeed, FrameStream) {
        let slots = slots.max(1);
        let (free_tx, free) = sync_channel(slots);
        for _ in 0..slots {
            // Cannot fail: the channel has room for every slot.
            let _ = free_tx.try_send(Slot::default());
        }
        let (reply, rx) = channel();
        (
            FrameFeed {
                jobs: self.jobs.clone(),
                inputs: Arc::clone(&self.inputs),
                free,
                reply,
                seq: 0,
            },
            FrameStream {
                rx,
                free: free_tx,
                pending: BTreeMap::new(),
                current: None,
                pos: 0,
                next: 0,
                total: frames,
                ended: false,
                object: object.to_string(),
            },
        )
    }
}

fn work(rx: &Mutex<Receiver<Job>>, window_log: u32) {
    let mut zstd = zstd::bulk::Decompressor::new().and_then(|mut z| {
        z.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(window_log))
            .map(|()| z)
    });
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            seq,
            expect,
            mut input,
            mut slot,
            sealed,
            reply,
        }) = job
        else {
            return;
        };
        let result = match &mut zstd {
            Ok(z) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let input = &mut input.buf;
                let compressed = match &sealed {
                    Some(frame) => {
                        let at = open(frame, input)?;
                        &input[at]
                    }
                    None => &input[..],
                };
                inflate(z, compressed, &mut slot.plain, expect)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("a decompression worker panicked"))),
            Err(e) => Err(io::Error::new(e.kind(), format!("cannot set up zstd: {e}"))),
        };
        // Back to the producers before the frame goes to the consumer.
        drop(input);
        // The consumer may be gone (it stopped early): nothing to do then.
        let _ = reply.send(Reply::Frame(seq, result, slot));
    }
}

/// Authenticates and decrypts, where they lie, the sealed chunks `sealed`
/// read for `frame` (for the last frame, on to the object's authenticated
/// end); returns where the frame's compressed bytes are in `sealed` then.
/// No buffer of its own: a worker holds nothing between frames.
fn open(frame: &SealedFrame, sealed: &mut [u8]) -> io::Result<std::ops::Range<usize>> {
    let object = &frame.object;
    let n = vaultline_crypto::open_in_place(
        sealed,
        &object.header,
        &object.key,
        frame.first_chunk,
        frame.end_chunk,
    )
    .map_err(|e| match e {
        vaultline_crypto::Error::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    let end = frame.skip + frame.len;
    if n < end {
        return Err(mismatch(
            "the payload ends before the frames its table lists".into(),
        ));
    }
    if frame.last && n > end {
        return Err(mismatch(
            "its payload goes on past the frames its table lists".into(),
        ));
    }
    Ok(frame.skip..end)
}

/// Sets `buf`'s length to `len`. Bytes a slot held before stay
/// initialized: no zeroing per frame.
fn resize(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
}

/// Decompresses the frame `compressed` into `plain`, which must end up
/// holding exactly `expect` bytes.
fn inflate(
    z: &mut zstd::bulk::Decompressor<'_>,
    compressed: &[u8],
    plain: &mut Vec<u8>,
    expect: usize,
) -> io::Result<()> {
    plain.clear();
    // The capacity bounds the output: a frame longer than its table entry
    // fails here rather than growing the buffer.
    plain.reserve_exact(expect);
    let wrong = |why: String| {
        mismatch(format!(
            "a frame does not decompress to the {expect} bytes of tar its table says: {why}"
        ))
    };
    let n = z
        .decompress_to_buffer(compressed, plain)
        .map_err(|e| wrong(e.to_string()))?;
    if n != expect {
        return Err(wrong(format!("it holds {n}")));
    }
    Ok(())
}

/// An authentic archive that does not match its manifest's frame table:
/// an integrity failure (only a writer with the key can make one).
fn mismatch(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, crate::error::IntegrityError(what))
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the next pipeline stage stopped")
}

/// The producer's end: cuts authenticated compressed bytes into frames.
pub struct FrameFeed {
    jobs: Sender<Job>,
    inputs: Arc<Inputs>,
    free: Receiver<Slot>,
    reply: Sender<Reply>,
    seq: u64,
}

impl FrameFeed {
    /// Reads the next frame, `len` compressed bytes, from `sealed` (waiting
    /// for a free slot first) and queues it to be decompressed into
    /// `expect` plain bytes. (Readers open sealed frames: this plain form
    /// tests the pool alone.)
    #[cfg(test)]
    pub fn frame(&mut self, sealed: &mut dyn Read, len: usize, expect: usize) -> io::Result<()> {
        let slot = self.free.recv().map_err(|_| broken())?;
        let mut input = Inputs::take(&self.inputs);
        resize(&mut input.buf, len);
        sealed.read_exact(&mut input.buf)?;
        self.send(input, slot, None, expect)
    }

    /// Reads the next frame's sealed chunks, `want` bytes at most: `carry`
    /// (the chunk it shares with the frame before, read already), then the
    /// rest from `reader`, and queues them to be opened as `frame` says and
    /// decompressed into `expect` plain bytes. Leaves in `carry` the bytes
    /// read from `keep_from` on (the chunk the next frame may share). Returns false
    /// when `reader` ended early: the worker names the truncation, and
    /// nothing more is to be read.
    pub fn sealed_frame(
        &mut self,
        reader: &mut dyn Read,
        carry: &mut Vec<u8>,
        want: usize,
        keep_from: usize,
        frame: SealedFrame,
        expect: usize,
    ) -> io::Result<bool> {
        // The frame's slot first, then an input buffer: a producer waiting
        // for a slot (for the consumer) holds no buffer others need.
        let slot = self.free.recv().map_err(|_| broken())?;
        let mut input = Inputs::take(&self.inputs);
        let buf = &mut input.buf;
        let carried = carry.len().min(want);
        resize(buf, want);
        buf[..carried].copy_from_slice(&carry[..carried]);
        let mut got = carried;
        while got < want {
            match reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        carry.clear();
        carry.extend_from_slice(&buf[keep_from.min(got)..]);
        self.send(input, slot, Some(frame), expect)?;
        Ok(got == want)
    }

    fn send(
        &mut self,
        input: Input,
        slot: Slot,
        sealed: Option<SealedFrame>,
        expect: usize,
    ) -> io::Result<()> {
        let job = Job {
            seq: self.seq,
            expect,
            input,
            slot,
            sealed,
            reply: self.reply.clone(),
        };
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the decompression workers stopped"))?;
        self.seq += 1;
        Ok(())
    }

    /// Marks a clean end: every frame was sent, and whatever the producer
    /// checks after them (the object's authenticated end) passed.
    pub fn finish(self) -> io::Result<()> {
        self.reply.send(Reply::End).map_err(|_| broken())
    }
}

/// The consumer's end: the archive's plain (tar) bytes, frame after frame.
pub struct FrameStream {
    rx: Receiver<Reply>,
    free: SyncSender<Slot>,
    /// Frames decompressed (or failed) ahead of their turn: a failure is
    /// reported in its turn, after every frame before it.
    pending: BTreeMap<u64, io::Result<Slot>>,
    current: Option<Slot>,
    pos: usize,
    next: u64,
    total: u64,
    ended: bool,
    object: String,
}

impl Read for FrameStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(c) = &self.current
                && self.pos < c.plain.len()
            {
                let n = out.len().min(c.plain.len() - self.pos);
                out[..n].copy_from_slice(&c.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if out.is_empty() {
                return Ok(0);
            }
            if let Some(done) = self.current.take() {
                // Room for every slot there is, so this never fails while
                // the producer is there; without it the slot has no use.
                let _ = self.free.try_send(done);
            }
            match self.pending.remove(&self.next) {
                Some(Ok(slot)) => {
                    self.next += 1;
                    self.current = Some(slot);
                    self.pos = 0;
                    continue;
                }
                Some(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        FrameError {
                            object: self.object.clone(),
                            source: e,
                        },
                    ));
                }
                None => {}
            }
            if self.ended && self.next == self.total {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Reply::Frame(seq, result, slot)) => {
                    self.pending.insert(seq, result.map(|()| slot));
                }
                Ok(Reply::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the previous pipeline stage stopped before the end of its data",
                    ));
                }
            }
        }
    }
}

/// A frame that failed, naming its archive; its cause (an authentication
/// failure, say) stays in the chain, so it is classified as before.
#[derive(Debug)]
struct FrameError {
    object: String,
    source: io::Error,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cause is the next link of the chain, shown after this one.
        write!(f, "reading archive {}", self.object)
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                if i % 4 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                if i % 3 == 0 { x as u8 } else { b'a' + (i % 7) as u8 }
            })
            .collect()
    }

    /// Frames of `frame` bytes of `data`, compressed, and their lengths.
    fn framed(data: &[u8], frame: usize) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
        let (mut out, mut lengths, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        for piece in data.chunks(frame) {
            let c = zstd::bulk::compress(piece, 3).unwrap();
            lengths.push(c.len());
            plain.push(piece.len());
            out.extend_from_slice(&c);
        }
        (out, lengths, plain)
    }

    #[test]
    fn frames_come_back_in_order_with_few_slots() {
        let data = sample(1 << 20, 7);
        let (compressed, lengths, plain) = framed(&data, 37_000);
        for (workers, slots) in [(1, 1), (3, 2), (4, 5)] {
            let got = std::thread::scope(|s| {
                let pool = Inflaters::start(s, workers, 23);
                let (mut feed, mut stream) = pool.archive(slots, lengths.len() as u64, "a");
                drop(pool);
                let (c, l, p) = (&compressed, &lengths, &plain);
                let producer = s.spawn(move || {
                    let mut src = &c[..];
                    for (&len, &expect) in l.iter().zip(p) {
                        feed.frame(&mut src, len, expect).unwrap();
                    }
                    feed.finish().unwrap();
                });
                let mut got = Vec::new();
                stream.read_to_end(&mut got).unwrap();
                producer.join().unwrap();
                got
            });
            assert!(got == data, "{workers} workers, {slots} slots");
        }
    }

    #[test]
    fn a_frame_longer_than_its_table_entry_fails() {
        let data = sample(100_000, 3);
        let (compressed, lengths, _) = framed(&data, 50_000);
        std::thread::scope(|s| {
            let pool = Inflaters::start(s, 2, 23);
            let (mut feed, mut stream) = pool.archive(2, 2, "a");
            drop(pool);
            let mut src = &compressed[..];
            feed.frame(&mut src, lengths[0], 50_000).unwrap();
            feed.frame(&mut src, lengths[1], 49_999).unwrap();
            feed.finish().unwrap();
            let err = anyhow::Error::from(stream.read_to_end(&mut Vec::new()).unwrap_err());
            assert!(
                format!("{err:#}").contains("reading archive a: a frame does not decompress"),
                "{err:#}"
            );
            // An archive that does not match its manifest: an integrity
            // failure (exit 4), not a failed run.
            assert!(crate::error::is_integrity(&err), "{err:#}");
        });
    }

    #[test]
    fn a_producer_that_stops_is_not_a_clean_end() {
        let data = sample(100_000, 5);
        let (compressed, lengths, plain) = framed(&data, 50_000);
        std::thread::scope(|s| {
            let pool = Inflaters::start(s, 2, 23);
            let (mut feed, mut stream) = pool.archive(2, 2, "a");
            drop(pool);
            feed.frame(&mut &compressed[..], lengths[0], plain[0]).unwrap();
            drop(feed);
            let err = stream.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    #[test]
    fn a_consumer_that_stops_breaks_the_producer() {
        let data = sample(200_000, 9);
        let (compressed, lengths, plain) = framed(&data, 50_000);
        std::thread::scope(|s| {
            let pool = Inflaters::start(s, 1, 23);
            let (mut feed, stream) = pool.archive(1, 4, "a");
            drop(pool);
            drop(stream);
            let mut src = &compressed[..];
            let err = (0..4)
                .try_for_each(|i| feed.frame(&mut src, lengths[i], plain[i]))
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        });
    }
}
