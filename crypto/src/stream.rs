//! The chunked payload (FORMAT.md §5): [`SealedWriter`] and [`SealedReader`].
//!
//! This is age's STREAM construction: the plaintext is cut into chunks of
//! the header's chunk size, each sealed with ChaCha20-Poly1305 under the
//! payload key and a nonce made of the chunk counter and a last-chunk flag
//! ([`ChunkNonce`]). Because position and finality are in the nonce, a chunk
//! moved, repeated, dropped or declared final in the wrong place fails
//! authentication.
//!
//! Unlike age, every chunk is preceded by a 4-byte frame word (final flag +
//! plaintext length). It costs 4 bytes per 64 KiB and buys exact diagnosis:
//! the reader always knows where a chunk ends, so it can tell truncation
//! from damage and see trailing bytes after a short final chunk, without
//! read-ahead or guessing; and chunk `k` of any object is at a computable
//! offset, for ranged reads. The frame word needs no MAC of its own: the
//! flag is in the nonce and the length is in Poly1305's length block.
//!
//! Both ends use one buffer of one chunk, whatever the object size. The
//! writer encrypts whole chunks straight out of the caller's slice when it
//! can, and the reader (over `BufRead`) decrypts whole chunks straight out of
//! the source's buffer, so in the common case no plaintext or ciphertext is
//! copied besides the encryption itself (see the `seal` benchmark).

use std::io::{self, BufRead, Read, Write};

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use zeroize::Zeroizing;

use crate::context::EncryptionContext;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::keys::{DataKey, KEY_SIZE, KeyEnvelope, random_bytes};
use crate::layout::{BINDING_SIZE, DEFAULT_CHUNK_SIZE, FRAME_SIZE, TAG_SIZE};
use crate::wrap::KeyWrap;

/// The frame word's final-chunk flag (its top bit).
const FINAL_FLAG: u32 = 1 << 31;
/// How far around its position the reader looks for the counter a failed
/// chunk was really sealed with, to name reordering and duplication. Only
/// the failure path pays for it (at most 2×1024 tag checks).
const DIAGNOSIS_WINDOW: u64 = 1024;

/// The STREAM nonce: an 88-bit big-endian chunk counter and a last-chunk
/// flag byte (FORMAT.md §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkNonce {
    counter: u64,
    last: bool,
}

impl ChunkNonce {
    /// The nonce of chunk `counter`, final or not.
    pub fn new(counter: u64, last: bool) -> Self {
        ChunkNonce { counter, last }
    }

    /// The 12 nonce bytes: 3 zero bytes, the counter as 8 big-endian bytes
    /// (together an 88-bit counter), then 0x01 for the final chunk or 0x00.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&self.counter.to_be_bytes());
        n[11] = u8::from(self.last);
        n
    }
}

/// Options for [`SealedWriter::with_options`].
#[derive(Clone, Debug)]
pub struct SealOptions {
    /// Plaintext bytes per chunk (a power of two from 1 KiB to 16 MiB).
    pub chunk_size: u32,
    /// A fixed salt, for test vectors only; `None` draws a random one.
    pub salt: Option<[u8; KEY_SIZE]>,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            salt: None,
        }
    }
}

fn chunk_aead(payload_key: &[u8; KEY_SIZE]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&Key::from(*payload_key))
}

/// Seals a byte stream: writes the header and binding tag at once, then one
/// sealed chunk per `chunk_size` plaintext bytes. [`finish`](Self::finish)
/// writes the final chunk; a writer dropped without it leaves a stream that
/// readers reject as truncated, which is what an interrupted backup should be.
pub struct SealedWriter<W: Write> {
    inner: W,
    aead: ChaCha20Poly1305,
    header: Header,
    chunk_size: usize,
    /// Frame word, plaintext (sealed in place), tag: one whole chunk.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    counter: u64,
    failed: bool,
}

impl<W: Write> SealedWriter<W> {
    /// Starts sealing into `inner` with a random salt and the default chunk size.
    pub fn new(inner: W, key: &DataKey, envelope: KeyEnvelope, context: EncryptionContext) -> Result<Self> {
        Self::with_options(inner, key, envelope, context, &SealOptions::default())
    }

    /// Starts sealing with explicit options.
    pub fn with_options(
        mut inner: W,
        key: &DataKey,
        envelope: KeyEnvelope,
        context: EncryptionContext,
        options: &SealOptions,
    ) -> Result<Self> {
        let salt = match options.salt {
            Some(s) => s,
            None => {
                let mut s = [0; KEY_SIZE];
                random_bytes(&mut s)?;
                s
            }
        };
        let (header, keys) = Header::seal(key, envelope, context, options.chunk_size, salt)?;
        let mut start = header.to_bytes();
        start.extend_from_slice(&header.binding());
        inner.write_all(&start)?;
        let chunk_size = options.chunk_size as usize;
        Ok(SealedWriter {
            inner,
            aead: chunk_aead(&keys.payload),
            header,
            chunk_size,
            buf: Zeroizing::new(vec![0; FRAME_SIZE + chunk_size + TAG_SIZE]),
            filled: 0,
            counter: 0,
            failed: false,
        })
    }

    /// The header this writer wrote.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Seals the final chunk, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        let SealedWriter { inner, .. } = self;
        Ok(inner)
    }

    /// Seals the buffered plaintext as the next chunk.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        self.seal_from(None, last)
    }

    /// Seals the next chunk and writes it out. The plaintext is either the
    /// buffered bytes (`input` = None, sealed in place) or a whole chunk
    /// taken straight from the caller's slice, encrypted into the buffer
    /// without first copying it there.
    fn seal_from(&mut self, input: Option<&[u8]>, last: bool) -> io::Result<()> {
        if self.failed {
            return Err(poisoned());
        }
        let len = input.map_or(self.filled, <[u8]>::len);
        let (frame, rest) = self.buf.split_at_mut(FRAME_SIZE);
        let (body, tail) = rest.split_at_mut(len);
        let Some(tag) = encrypt_chunk(&self.aead, ChunkNonce::new(self.counter, last), input, body) else {
            // Only possible for a chunk over 256 GiB, which chunk_size forbids.
            self.failed = true;
            return Err(Error::TooLong.into_io());
        };
        tail[..TAG_SIZE].copy_from_slice(&tag);
        // len <= chunk_size <= 2^24, so it fits below the flag bit.
        let word = len as u32 | if last { FINAL_FLAG } else { 0 };
        frame.copy_from_slice(&word.to_be_bytes());
        if let Err(e) = self.inner.write_all(&self.buf[..FRAME_SIZE + len + TAG_SIZE]) {
            self.failed = true;
            return Err(e);
        }
        self.filled = 0;
        self.counter = match self.counter.checked_add(1) {
            Some(c) => c,
            None => {
                self.failed = true;
                return Err(Error::TooLong.into_io());
            }
        };
        Ok(())
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(poisoned());
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sealed only once more data arrives, because until
        // then it might be the final chunk.
        if self.filled == self.chunk_size {
            self.seal_chunk(false)?;
        }
        // With nothing buffered and more than a chunk offered, the first
        // chunk is certainly not the last: seal it straight from `data`.
        if self.filled == 0 && data.len() > self.chunk_size {
            self.seal_from(Some(&data[..self.chunk_size]), false)?;
            return Ok(self.chunk_size);
        }
        let n = data.len().min(self.chunk_size - self.filled);
        let at = FRAME_SIZE + self.filled;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // A partial chunk cannot be sealed early without ending the stream.
        self.inner.flush()
    }
}

fn poisoned() -> io::Error {
    io::Error::other("sealed stream is unusable after an earlier error")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    Done,
    Failed,
}

/// Opens a sealed stream: yields plaintext only from chunks that have been
/// authenticated, and fails with a typed [`Error`] (inside the `io::Error`;
/// see [`Error::from_io`]) on anything that is not exactly what the writer
/// produced. `read` returns 0 only after the final chunk has authenticated
/// and the input has been seen to end.
pub struct SealedReader<R: BufRead> {
    inner: R,
    aead: ChaCha20Poly1305,
    chunk_size: usize,
    /// Ciphertext and tag of one chunk, decrypted in place.
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    len: usize,
    counter: u64,
    /// Offset in the object of the next unread byte.
    offset: u64,
    /// For a ranged reader: the chunk index at which the range ends.
    limit: Option<u64>,
    state: ReadState,
}

impl<R: BufRead> SealedReader<R> {
    /// Reads the header from `inner`, unwraps the data key with `keys`, and
    /// opens the payload. Returns the header too, for its context.
    pub fn open<K: KeyWrap + ?Sized>(mut inner: R, keys: &K) -> Result<(Header, Self)> {
        let header = Header::read_from(&mut inner)?;
        let data_key = keys.unwrap(header.envelope(), header.context())?;
        let reader = SealedReader::new(inner, &header, &data_key)?;
        Ok((header, reader))
    }

    /// Opens the payload of an object whose `header` has been read from
    /// `inner` already, with its data key (obtained from the header's
    /// envelope or from a re-wrapped copy of it elsewhere). Checks the key
    /// commitment, then the header MAC, then the payload's binding tag.
    pub fn new(mut inner: R, header: &Header, key: &DataKey) -> Result<Self> {
        let keys = header.verify(key)?;
        let offset = header.encoded_len() as u64;
        let mut binding = [0u8; BINDING_SIZE];
        let got = read_full(&mut inner, &mut binding)?;
        if got < BINDING_SIZE {
            return Err(Error::Truncated {
                index: 0,
                offset: offset + got as u64,
            });
        }
        if binding != header.binding() {
            return Err(Error::PayloadMismatch { offset });
        }
        Ok(Self::positioned(
            inner,
            header,
            &keys.payload,
            0,
            offset + BINDING_SIZE as u64,
            None,
        ))
    }

    /// A reader whose next chunk is chunk `counter`, starting at byte
    /// `offset` of the object, stopping before chunk `limit` if given.
    fn positioned(
        inner: R,
        header: &Header,
        payload_key: &[u8; KEY_SIZE],
        counter: u64,
        offset: u64,
        limit: Option<u64>,
    ) -> Self {
        let chunk_size = header.chunk_size() as usize;
        SealedReader {
            inner,
            aead: chunk_aead(payload_key),
            chunk_size,
            buf: Zeroizing::new(vec![0; chunk_size + TAG_SIZE]),
            pos: 0,
            len: 0,
            counter,
            offset,
            limit,
            state: ReadState::Reading,
        }
    }

    /// A reader of chunks `first..end` only (`end` = None: to the final
    /// chunk), for ranged reads: `inner` must start at byte
    /// [`Header::chunk_offset`]`(first)` of the object. Checks the key
    /// commitment and the header MAC; the binding tag is not in the range,
    /// but every chunk still authenticates only at its own index of this
    /// object (its payload key is the object's own). `read` returns 0 when
    /// the range ends (after chunk `end - 1`), or, as always, after an
    /// authentic final chunk and the end of the input.
    pub fn at_chunk(inner: R, header: &Header, key: &DataKey, first: u64, end: Option<u64>) -> Result<Self> {
        let keys = header.verify(key)?;
        Ok(Self::positioned(
            inner,
            header,
            &keys.payload,
            first,
            header.chunk_offset(first),
            end,
        ))
    }

    /// Offset in the sealed object of the next byte to be read from it.
    pub fn sealed_offset(&self) -> u64 {
        self.offset
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads, authenticates and decrypts the next chunk into `dst` (at least
    /// `chunk_size + TAG_SIZE` long); returns its plaintext length.
    fn next_chunk(&mut self, dst: &mut [u8]) -> Result<usize> {
        let index = self.counter;
        let frame_at = self.offset;
        let mut frame = [0u8; FRAME_SIZE];
        let got = read_full(&mut self.inner, &mut frame)?;
        if got < FRAME_SIZE {
            return Err(Error::Truncated {
                index,
                offset: frame_at + got as u64,
            });
        }
        let (len, last) = frame_word(frame, index, frame_at, self.chunk_size)?;
        if !self.open_from_source(&mut dst[..len], index, last)? {
            let sealed = &mut dst[..len + TAG_SIZE];
            let got = read_full(&mut self.inner, sealed)?;
            if got < sealed.len() {
                return Err(Error::Truncated {
                    index,
                    offset: frame_at + (FRAME_SIZE + got) as u64,
                });
            }
            if !open_chunk_in_place(&self.aead, sealed, index, last) {
                return Err(diagnose(&self.aead, sealed, index, last, frame_at));
            }
        }
        if last && len == 0 && index > 0 {
            return Err(Error::EmptyFinalChunk {
                index,
                offset: frame_at,
            });
        }
        self.offset = frame_at + (FRAME_SIZE + len + TAG_SIZE) as u64;
        self.counter = index.checked_add(1).ok_or(Error::TooLong)?;
        if last {
            self.check_end()?;
            self.state = ReadState::Done;
        }
        Ok(len)
    }

    /// The fast path: when the source's buffer already holds the whole
    /// sealed chunk, authenticate it there and decrypt it straight into
    /// `out`, saving the copy into our own buffer. Returns false, consuming
    /// nothing, when the chunk is not all there or does not authenticate;
    /// the caller then takes the copying path, which also names failures.
    fn open_from_source(&mut self, out: &mut [u8], counter: u64, last: bool) -> io::Result<bool> {
        let len = out.len();
        let available = self.inner.fill_buf()?;
        if available.len() < len + TAG_SIZE {
            return Ok(false);
        }
        let opened = decrypt_chunk(
            &self.aead,
            ChunkNonce::new(counter, last),
            &available[..len + TAG_SIZE],
            out,
        );
        if opened {
            self.inner.consume(len + TAG_SIZE);
        }
        Ok(opened)
    }

    /// After the final chunk the input must end.
    fn check_end(&mut self) -> Result<()> {
        check_end(
            &self.aead,
            &mut self.inner,
            self.counter,
            self.offset,
            self.chunk_size,
        )
    }
}

/// The length and final flag a chunk's frame word declares, checked
/// against the chunk size (only a final chunk may be shorter).
fn frame_word(
    frame: [u8; FRAME_SIZE],
    index: u64,
    frame_at: u64,
    chunk_size: usize,
) -> Result<(usize, bool)> {
    let word = u32::from_be_bytes(frame);
    let last = word & FINAL_FLAG != 0;
    let len = (word & !FINAL_FLAG) as usize;
    if len > chunk_size {
        return Err(Error::MalformedChunk {
            index,
            offset: frame_at,
            reason: format!("declares {len} plaintext bytes, more than the chunk size {chunk_size}"),
        });
    }
    if !last && len != chunk_size {
        return Err(Error::MalformedChunk {
            index,
            offset: frame_at,
            reason: format!(
                "a non-final chunk must hold exactly {chunk_size} bytes, this one declares {len}"
            ),
        });
    }
    Ok((len, last))
}

/// After the final chunk (`counter` is the one after it, at offset `at`)
/// the input must end. If it does not, says whether what follows is
/// another authentic final chunk or just bytes.
fn check_end(
    aead: &ChaCha20Poly1305,
    inner: &mut impl Read,
    counter: u64,
    at: u64,
    chunk_size: usize,
) -> Result<()> {
    let mut frame = [0u8; FRAME_SIZE];
    let got = read_full(inner, &mut frame)?;
    if got == 0 {
        return Ok(());
    }
    if got == FRAME_SIZE {
        let word = u32::from_be_bytes(frame);
        let len = (word & !FINAL_FLAG) as usize;
        if word & FINAL_FLAG != 0 && len <= chunk_size {
            // Probe in a scratch buffer: the final chunk's plaintext may
            // still be waiting in the reader's buffer or in the caller's.
            let mut probe = vec![0u8; len + TAG_SIZE];
            if read_full(inner, &mut probe)? == probe.len() {
                let lo = counter.saturating_sub(DIAGNOSIS_WINDOW);
                let hi = counter.saturating_add(DIAGNOSIS_WINDOW);
                for counter in lo..=hi {
                    let nonce = Nonce::from(ChunkNonce::new(counter, true).to_bytes());
                    let (data, tag) = probe.split_at_mut(len);
                    let Ok(tag) = <&Tag>::try_from(&*tag) else { break };
                    if aead.decrypt_inout_detached(&nonce, &[], data.into(), tag).is_ok() {
                        return Err(Error::MultipleFinalChunks { offset: at });
                    }
                }
            }
        }
    }
    Err(Error::TrailingData { offset: at })
}

/// Opens, in place, sealed chunks held whole in memory: `buf` holds the
/// object's bytes from [`Header::chunk_offset`]`(first)` on, up to chunk
/// `end` (exclusive) or, with `end = None`, to the object's end. Each chunk
/// is authenticated at its own index and decrypted where it lies, and the
/// plaintext is moved to the front of `buf`; returns its length. The same
/// checks, in the same order, with the same errors, as reading
/// [`SealedReader::at_chunk`]`(buf, header, key, first, end)` to its end:
/// truncation, malformed frame words, damage (named as tampering,
/// replay or reordering), an empty final chunk, and after the final chunk
/// trailing bytes. A final chunk before `end` ends the plaintext there
/// (the caller, knowing how much it expects, sees it short). On an error
/// the bytes before the failing chunk are authentic plaintext; the rest of
/// `buf` is unspecified.
///
/// This is [`SealedReader`] without its chunk buffer and without the copy
/// out of it, for a reader that holds a range of an object in memory
/// anyway (a restore's frames).
pub fn open_in_place(
    buf: &mut [u8],
    header: &Header,
    key: &DataKey,
    first: u64,
    end: Option<u64>,
) -> Result<usize> {
    let keys = header.verify(key)?;
    let aead = chunk_aead(&keys.payload);
    let chunk_size = header.chunk_size() as usize;
    let base = header.chunk_offset(first);
    let (mut read, mut written) = (0usize, 0usize);
    let mut index = first;
    loop {
        if end == Some(index) {
            return Ok(written);
        }
        let frame_at = base + read as u64;
        let rest = buf.len() - read;
        if rest < FRAME_SIZE {
            return Err(Error::Truncated {
                index,
                offset: frame_at + rest as u64,
            });
        }
        let mut frame = [0u8; FRAME_SIZE];
        frame.copy_from_slice(&buf[read..read + FRAME_SIZE]);
        let (len, last) = frame_word(frame, index, frame_at, chunk_size)?;
        let start = read + FRAME_SIZE;
        let available = buf.len() - start;
        if available < len + TAG_SIZE {
            return Err(Error::Truncated {
                index,
                offset: frame_at + (FRAME_SIZE + available) as u64,
            });
        }
        let sealed = &mut buf[start..start + len + TAG_SIZE];
        if !open_chunk_in_place(&aead, sealed, index, last) {
            return Err(diagnose(&aead, sealed, index, last, frame_at));
        }
        if last && len == 0 && index > 0 {
            return Err(Error::EmptyFinalChunk {
                index,
                offset: frame_at,
            });
        }
        buf.copy_within(start..start + len, written);
        written += len;
        read = start + len + TAG_SIZE;
        index = index.checked_add(1).ok_or(Error::TooLong)?;
        if last {
            check_end(&aead, &mut &buf[read..], index, base + read as u64, chunk_size)?;
            return Ok(written);
        }
    }
}

impl<R: BufRead> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let n = out.len().min(self.len - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                ReadState::Done => return Ok(0),
                ReadState::Failed => return Err(poisoned()),
                ReadState::Reading => {
                    if out.is_empty() || self.limit == Some(self.counter) {
                        return Ok(0);
                    }
                    // A caller buffer that holds a whole sealed chunk is
                    // decrypted into directly, saving a copy per chunk.
                    let direct = out.len() >= self.chunk_size + TAG_SIZE;
                    let mut buf = if direct {
                        Zeroizing::new(Vec::new())
                    } else {
                        std::mem::take(&mut self.buf)
                    };
                    let result = if direct {
                        self.next_chunk(out)
                    } else {
                        self.next_chunk(&mut buf)
                    };
                    if !direct {
                        self.buf = buf;
                    }
                    match result {
                        Ok(n) if direct => return Ok(n),
                        Ok(n) => {
                            self.pos = 0;
                            self.len = n;
                        }
                        Err(e) => {
                            self.state = ReadState::Failed;
                            self.pos = 0;
                            self.len = 0;
                            // Whatever reached `out` is unauthenticated: wipe it.
                            if direct {
                                out.iter_mut().for_each(|b| *b = 0);
                            }
                            return Err(e.into_io());
                        }
                    }
                }
            }
        }
    }
}

// The AEAD calls live in these non-generic functions so that they are
// compiled (and optimized) once, here, rather than instantiated in every
// crate that uses a `SealedWriter<W>` or `SealedReader<R>`.

/// Encrypts one chunk into `out`: from `input` if given (out-of-place), else
/// `out` in place. Returns the tag, or `None` for a chunk too long for the
/// AEAD (impossible with the chunk sizes the format allows).
#[inline(never)]
fn encrypt_chunk(
    aead: &ChaCha20Poly1305,
    nonce: ChunkNonce,
    input: Option<&[u8]>,
    out: &mut [u8],
) -> Option<Tag> {
    let nonce = Nonce::from(nonce.to_bytes());
    let sealed = match input {
        None => aead.encrypt_inout_detached(&nonce, &[], out.into()),
        Some(plain) => match InOutBuf::new(plain, out) {
            Ok(io) => aead.encrypt_inout_detached(&nonce, &[], io),
            Err(_) => return None,
        },
    };
    sealed.ok()
}

/// Authenticates `sealed` (ciphertext then tag) and decrypts it into `out`
/// (out-of-place). False, with `out` untouched, when it does not authenticate.
#[inline(never)]
fn decrypt_chunk(aead: &ChaCha20Poly1305, nonce: ChunkNonce, sealed: &[u8], out: &mut [u8]) -> bool {
    let Some(split) = sealed.len().checked_sub(TAG_SIZE) else {
        return false;
    };
    let (ciphertext, tag) = sealed.split_at(split);
    let Ok(tag) = <&Tag>::try_from(tag) else {
        return false;
    };
    match InOutBuf::new(ciphertext, out) {
        Ok(io) => aead
            .decrypt_inout_detached(&Nonce::from(nonce.to_bytes()), &[], io, tag)
            .is_ok(),
        Err(_) => false,
    }
}

/// Decrypts a sealed chunk (ciphertext then tag) in place as chunk `counter`.
/// On failure returns false and leaves the bytes as they were: the AEAD
/// checks the tag before it decrypts.
#[inline(never)]
fn open_chunk_in_place(aead: &ChaCha20Poly1305, sealed: &mut [u8], counter: u64, last: bool) -> bool {
    let nonce = Nonce::from(ChunkNonce::new(counter, last).to_bytes());
    let Some(split) = sealed.len().checked_sub(TAG_SIZE) else {
        return false;
    };
    let (data, tag) = sealed.split_at_mut(split);
    let Ok(tag) = <&Tag>::try_from(&*tag) else {
        return false;
    };
    aead.decrypt_inout_detached(&nonce, &[], data.into(), tag).is_ok()
}

/// Names the failure of chunk `index`: if the chunk authenticates under a
/// nearby counter it was moved or copied; otherwise its bytes changed.
fn diagnose(aead: &ChaCha20Poly1305, sealed: &mut [u8], index: u64, last: bool, offset: u64) -> Error {
    let lo = index.saturating_sub(DIAGNOSIS_WINDOW);
    let hi = index.saturating_add(DIAGNOSIS_WINDOW);
    for sealed_as in (lo..=hi).filter(|&c| c != index) {
        if open_chunk_in_place(aead, sealed, sealed_as, last) {
            sealed.iter_mut().for_each(|b| *b = 0);
            return if sealed_as < index {
                Error::ChunkReplayed {
                    index,
                    sealed_as,
                    offset,
                }
            } else {
                Error::ChunkOutOfOrder {
                    index,
                    sealed_as,
                    offset,
                }
            };
        }
    }
    Error::ChunkTampered { index, offset }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_layout() {
        assert_eq!(ChunkNonce::new(0, false).to_bytes(), [0; 12]);
        assert_eq!(
            ChunkNonce::new(0x0102, true).to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1]
        );
    }
}
