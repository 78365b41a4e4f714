//! A bounded in-memory pipe between two pipeline threads.
//!
//! Backup reads files and builds tar on one thread while another compresses,
//! seals and stores; restore decrypts and decompresses on one thread while
//! another writes files. The pipe carries fixed-size blocks through a bounded
//! channel and recycles them, so the memory between the stages is fixed
//! (`blocks × block_size`) whatever flows through.
//!
//! If the reading side stops early (its stage failed), writes fail with
//! `BrokenPipe`; if the writing side is dropped without [`PipeWriter::finish`]
//! (its stage failed), reads fail with `UnexpectedEof` rather than looking
//! like a clean end.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

enum Msg {
    Data(Vec<u8>),
    End,
}

/// Writing end.
pub struct PipeWriter {
    tx: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
    block: Vec<u8>,
    block_size: usize,
}

/// Reading end.
pub struct PipeReader {
    rx: Receiver<Msg>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
}

/// A pipe holding at most `blocks` blocks of `block_size` bytes in flight.
pub fn pipe(blocks: usize, block_size: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(blocks);
    let (recycle, free) = sync_channel(blocks + 2);
    let writer = PipeWriter {
        tx,
        free,
        block: Vec::with_capacity(block_size),
        block_size,
    };
    let reader = PipeReader {
        rx,
        recycle,
        current: Vec::new(),
        pos: 0,
        ended: false,
    };
    (writer, reader)
}

/// True when `err` is (or wraps) the error the writing end gets because the
/// reading stage stopped: a consequence, not a cause.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the next pipeline stage stopped")
}

impl PipeWriter {
    fn send_block(&mut self) -> io::Result<()> {
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.block_size));
        let full = std::mem::replace(&mut self.block, next);
        self.tx.send(Msg::Data(full)).map_err(|_| broken())
    }

    /// Sends what is buffered and marks a clean end of data.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            self.send_block()?;
        }
        self.tx.send(Msg::End).map_err(|_| broken())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.block.len() == self.block_size {
            self.send_block()?;
        }
        let n = data.len().min(self.block_size - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = out.len().min(self.current.len() - self.pos);
                out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(block)) => {
                    let mut done = std::mem::replace(&mut self.current, block);
                    self.pos = 0;
                    done.clear();
                    // The writer may be gone; a lost block is only a lost reuse.
                    let _ = self.recycle.try_send(done);
                }
                Ok(Msg::End) => self.ended = true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_bytes_in_order_and_ends_cleanly() {
        let (mut w, mut r) = pipe(2, 7);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            for piece in sent.chunks(13) {
                w.write_all(piece).unwrap();
            }
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_dropped_writer_is_not_a_clean_end() {
        let (mut w, mut r) = pipe(2, 4);
        w.write_all(b"abcdefgh").unwrap();
        drop(w);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_dropped_reader_breaks_the_writer() {
        let (mut w, r) = pipe(1, 4);
        drop(r);
        let err = (0..10).try_for_each(|_| w.write_all(b"abcd")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
