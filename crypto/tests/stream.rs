//! Round trips and tampering through the public streaming API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests a panic is the failure report

use std::io::{self, BufReader, Read, Write};

use proptest::prelude::*;
use vaultline_crypto::{
    DEFAULT_CHUNK_SIZE, DataKey, EncryptionContext, Error, Header, KeyWrap, LocalKeyWrap, MasterKey,
    SealOptions, SealedReader, SealedWriter, open_in_place,
};

fn provider() -> LocalKeyWrap {
    LocalKeyWrap::new(&MasterKey::from_bytes([0x11; 32]))
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("job", "stream-tests")
        .unwrap()
        .with("snapshot", "s1")
        .unwrap()
}

/// Seals `plain`, feeding the writer in pieces of the given sizes (cycled).
fn seal_in_pieces(plain: &[u8], chunk_size: u32, pieces: &[usize]) -> (Vec<u8>, DataKey) {
    let p = provider();
    let (key, envelope) = p.generate(&context()).unwrap();
    let opts = SealOptions {
        chunk_size,
        salt: None,
    };
    let mut w = SealedWriter::with_options(Vec::new(), &key, envelope, context(), &opts).unwrap();
    let mut at = 0;
    for &n in pieces.iter().cycle() {
        if at >= plain.len() {
            break;
        }
        let end = (at + n.max(1)).min(plain.len());
        w.write_all(&plain[at..end]).unwrap();
        at = end;
    }
    (w.finish().unwrap(), key)
}

/// Opens with the provider, reading into buffers of `read_size` bytes.
fn open_with(sealed: &[u8], read_size: usize) -> Result<Vec<u8>, Error> {
    open_from(sealed, read_size)
}

/// Opens through a `BufReader` of `capacity` bytes, which (being smaller
/// than a chunk) makes the reader take its copying path, not the fast path
/// that decrypts straight out of the source's buffer.
fn open_buffered(sealed: &[u8], capacity: usize, read_size: usize) -> Result<Vec<u8>, Error> {
    open_from(BufReader::with_capacity(capacity, sealed), read_size)
}

fn open_from<R: io::BufRead>(source: R, read_size: usize) -> Result<Vec<u8>, Error> {
    let (_, mut r) = SealedReader::open(source, &provider())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size.max(1)];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(into_error(e)),
        }
    }
}

fn into_error(e: io::Error) -> Error {
    if Error::from_io(&e).is_some() {
        *e.into_inner().unwrap().downcast::<Error>().unwrap()
    } else {
        Error::Io(e)
    }
}

fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn boundary_len(chunk: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(chunk - 1),
        Just(chunk),
        Just(chunk + 1),
        Just(3 * chunk),
        Just(3 * chunk - 1),
        Just(3 * chunk + 1),
        0..4 * chunk,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any length around the chunk boundaries, written and read in any split,
    /// comes back byte for byte; the sealed size is exactly as FORMAT.md says.
    #[test]
    fn round_trip_at_default_chunk_size(
        len in boundary_len(DEFAULT_CHUNK_SIZE as usize),
        pieces in proptest::collection::vec(1usize..200_000, 1..5),
        read_size in prop_oneof![Just(1usize), 1usize..70_000, Just(1 << 20)],
        seed in any::<u8>(),
    ) {
        let plain = plaintext(len, seed);
        let (sealed, _) = seal_in_pieces(&plain, DEFAULT_CHUNK_SIZE, &pieces);
        let (header, header_len) = Header::parse(&sealed).unwrap();
        let chunk = DEFAULT_CHUNK_SIZE as usize;
        let chunks = if len == 0 { 1 } else { len.div_ceil(chunk) };
        prop_assert_eq!(sealed.len(), header_len + 16 + len + chunks * (4 + 16));
        prop_assert_eq!(header.payload_offset() as usize, header_len + 16);
        prop_assert_eq!(open_with(&sealed, read_size).unwrap(), plain);
    }

    #[test]
    fn round_trip_through_a_small_source_buffer(
        len in boundary_len(DEFAULT_CHUNK_SIZE as usize),
        capacity in 1usize..70_000,
        read_size in prop_oneof![Just(1usize), 1usize..70_000, Just(1 << 20)],
    ) {
        let plain = plaintext(len, 9);
        let (sealed, _) = seal_in_pieces(&plain, DEFAULT_CHUNK_SIZE, &[100_000]);
        prop_assert_eq!(open_buffered(&sealed, capacity, read_size).unwrap(), plain);
    }

    #[test]
    fn round_trip_at_small_chunk_size(
        len in boundary_len(1024),
        pieces in proptest::collection::vec(1usize..3000, 1..5),
        read_size in 1usize..5000,
    ) {
        let plain = plaintext(len, 7);
        let (sealed, _) = seal_in_pieces(&plain, 1024, &pieces);
        prop_assert_eq!(open_with(&sealed, read_size).unwrap(), plain);
    }
}

/// A 5-chunk object (1 KiB chunks) used by the tamper tests.
fn sample() -> (Vec<u8>, Vec<u8>, DataKey) {
    let plain = plaintext(4 * 1024 + 333, 3);
    let (sealed, key) = seal_in_pieces(&plain, 1024, &[777]);
    (sealed, plain, key)
}

#[test]
fn no_single_byte_change_anywhere_yields_plaintext() {
    let (sealed, _, _) = sample();
    for at in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = sealed.clone();
            bad[at] ^= bit;
            // Both reading paths: straight from the source's buffer, and copying.
            let copied = open_buffered(&bad, 100, 4096);
            assert_eq!(
                copied.as_ref().map_err(|e| e.to_string()),
                open_with(&bad, 4096).as_ref().map_err(|e| e.to_string()),
                "offset {at}: the two reading paths disagree"
            );
            let result = copied;
            assert!(
                result.is_err(),
                "flipping bit {bit:#x} at offset {at} was accepted"
            );
            let err = result.unwrap_err();
            assert!(err.is_integrity(), "offset {at}: not an integrity error: {err}");
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let (sealed, _, _) = sample();
    for cut in 0..sealed.len() {
        let err = open_with(&sealed[..cut], 4096).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { .. } | Error::HeaderTruncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn altered_context_is_header_tampered_when_opened_with_the_data_key() {
    let (mut sealed, _, key) = sample();
    let (header, _) = Header::parse(&sealed).unwrap();
    // The first context value byte: after magic..commitment (78), count (2),
    // first key length (2) and key "job" (3), value length (2).
    let at = 78 + 2 + 2 + 3 + 2;
    assert_eq!(sealed[at], b's', "layout assumption");
    sealed[at] ^= 0x01;
    let (altered, used) = Header::parse(&sealed).unwrap();
    assert_ne!(altered.context(), header.context());
    let err = SealedReader::new(&sealed[used..], &altered, &key).err().unwrap();
    assert!(matches!(err, Error::HeaderTampered), "{err}");
}

#[test]
fn wrong_data_key_is_reported_as_wrong_key() {
    let (sealed, _, _) = sample();
    let (header, used) = Header::parse(&sealed).unwrap();
    let err = SealedReader::new(&sealed[used..], &header, &DataKey::from_bytes([0; 32]))
        .err()
        .unwrap();
    assert!(matches!(err, Error::WrongKey), "{err}");
}

#[test]
fn another_master_key_names_both_fingerprints() {
    let (sealed, _, _) = sample();
    let other = LocalKeyWrap::new(&MasterKey::from_bytes([0x22; 32]));
    let err = SealedReader::open(&sealed[..], &other).err().unwrap();
    match err {
        Error::KeyMismatch { sealed_with, have } => {
            assert_eq!(sealed_with, provider().key_id());
            assert_eq!(have, other.key_id());
        }
        other => panic!("expected KeyMismatch, got {other}"),
    }
}

#[test]
fn writer_dropped_without_finish_leaves_a_truncated_stream() {
    let p = provider();
    let (key, envelope) = p.generate(&context()).unwrap();
    let mut out = Vec::new();
    {
        let mut w = SealedWriter::new(&mut out, &key, envelope, context()).unwrap();
        w.write_all(&plaintext(200_000, 1)).unwrap();
    }
    assert!(matches!(open_with(&out, 4096), Err(Error::Truncated { .. })));
}

#[test]
fn reader_stays_failed_and_wipes_unauthenticated_bytes() {
    let (mut sealed, _, _) = sample();
    let (header, _) = Header::parse(&sealed).unwrap();
    let first_ciphertext = header.payload_offset() as usize + 4 + 10;
    sealed[first_ciphertext] ^= 0xff;
    let (_, mut r) = SealedReader::open(&sealed[..], &provider()).unwrap();
    // A buffer big enough for direct decryption into it.
    let mut out = vec![0xAAu8; 8192];
    let err = r.read(&mut out).unwrap_err();
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::ChunkTampered { index: 0, .. })
    ));
    assert!(
        out.iter().all(|&b| b == 0),
        "ciphertext left in the caller's buffer"
    );
    assert!(r.read(&mut out).is_err(), "a failed reader must not resume");
}

#[test]
fn plaintext_of_a_chunk_is_released_only_after_it_authenticates() {
    // Damage chunk 2: chunks 0 and 1 are released, then the error; nothing
    // of chunk 2 ever reaches the caller.
    let (mut sealed, plain, _) = sample();
    let (header, _) = Header::parse(&sealed).unwrap();
    let chunk2 = header.payload_offset() as usize + 2 * (4 + 1024 + 16);
    sealed[chunk2 + 4 + 1] ^= 0x01;
    let (_, mut r) = SealedReader::open(&sealed[..], &provider()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    let err = loop {
        match r.read(&mut buf) {
            Ok(0) => panic!("damaged stream read to the end"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(got, plain[..2048]);
    assert!(matches!(
        Error::from_io(&err),
        Some(Error::ChunkTampered { index: 2, .. })
    ));
}

/// Ranged reads: any run of chunks, taken from the middle of the object,
/// yields exactly that run's plaintext; a chunk from another position, or a
/// non-final chunk presented as the end of the range that reaches the final
/// chunk, does not authenticate.
#[test]
fn ranged_reads_yield_exactly_their_chunks_and_nothing_else() {
    let (sealed, plain, key) = sample();
    let (header, _) = Header::parse(&sealed).unwrap();
    let chunks = 5u64;
    let at = |k: u64| header.chunk_offset(k) as usize;
    for first in 0..chunks {
        for end in first + 1..=chunks {
            let bytes = if end == chunks {
                &sealed[at(first)..]
            } else {
                &sealed[at(first)..at(end)]
            };
            let limit = (end < chunks).then_some(end);
            let mut r = SealedReader::at_chunk(bytes, &header, &key, first, limit).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            let lo = first as usize * 1024;
            let hi = (end as usize * 1024).min(plain.len());
            assert_eq!(out, &plain[lo..hi], "chunks {first}..{end}");
        }
    }
    // Chunk 2's bytes presented as chunk 1.
    let mut r = SealedReader::at_chunk(&sealed[at(2)..at(3)], &header, &key, 1, Some(2)).unwrap();
    let err = into_error(r.read_to_end(&mut Vec::new()).unwrap_err());
    assert!(
        matches!(
            err,
            Error::ChunkOutOfOrder {
                index: 1,
                sealed_as: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // The range to the end, cut short by one chunk: the last chunk read is
    // not final, so the input ends where a chunk should be.
    let mut r = SealedReader::at_chunk(&sealed[at(3)..at(4)], &header, &key, 3, None).unwrap();
    let err = into_error(r.read_to_end(&mut Vec::new()).unwrap_err());
    assert!(matches!(err, Error::Truncated { index: 4, .. }), "{err:?}");
    // A wrong data key is refused before any chunk is read.
    let other = DataKey::from_bytes([7; 32]);
    assert!(matches!(
        SealedReader::at_chunk(&sealed[at(1)..], &header, &other, 1, None).err(),
        Some(Error::WrongKey)
    ));
}

/// What reading chunks `first..end` of `sealed` through the reader gives,
/// and what opening them in place gives: the plaintext, or the error's
/// text.
fn both_ways(
    sealed: &[u8],
    header: &Header,
    key: &DataKey,
    first: u64,
    end: Option<u64>,
) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
    let from = (header.chunk_offset(first) as usize).min(sealed.len());
    let bytes = match end {
        Some(e) => &sealed[from..(header.chunk_offset(e) as usize).clamp(from, sealed.len())],
        None => &sealed[from..],
    };
    let read = SealedReader::at_chunk(bytes, header, key, first, end)
        .and_then(|mut r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map_err(into_error)?;
            Ok(out)
        })
        .map_err(|e| e.to_string());
    let mut buf = bytes.to_vec();
    let in_place = open_in_place(&mut buf, header, key, first, end)
        .map(|n| buf[..n].to_vec())
        .map_err(|e| e.to_string());
    (read, in_place)
}

/// Opening in place is the reader without its buffer: for every range of
/// chunks, every flipped bit, every truncation and bytes after the end, the
/// same plaintext or the same error.
#[test]
fn opening_in_place_agrees_with_the_reader_on_every_damage() {
    let (sealed, plain, key) = sample();
    let (header, _) = Header::parse(&sealed).unwrap();
    let chunks = 5u64;
    let ranges: Vec<(u64, Option<u64>)> = (0..chunks)
        .flat_map(|first| (first + 1..=chunks).map(move |end| (first, (end < chunks).then_some(end))))
        .collect();
    for &(first, end) in &ranges {
        let (read, in_place) = both_ways(&sealed, &header, &key, first, end);
        let lo = first as usize * 1024;
        let hi = end.map_or(plain.len(), |e| e as usize * 1024);
        assert_eq!(read.as_deref(), Ok(&plain[lo..hi]), "{first}..{end:?}");
        assert_eq!(in_place, read, "{first}..{end:?}");
    }
    // Every byte near a chunk's edges (frame words, tags), and a sample
    // of the rest (a failed chunk costs 2048 trial decryptions: every byte
    // of every range takes minutes in a debug build).
    let payload = header.chunk_offset(0) as usize;
    let edges: Vec<usize> = (0..=chunks).map(|k| header.chunk_offset(k) as usize).collect();
    let near_edge = |at: usize| edges.iter().any(|&e| at + 20 >= e && at < e + 6);
    let offsets: Vec<usize> = (payload..sealed.len())
        .filter(|&at| near_edge(at) || at % 61 == 0)
        .collect();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for &at in &offsets {
        let mut bad = sealed.clone();
        bad[at] ^= if at % 2 == 0 { 0x01 } else { 0x80 };
        cases.push((format!("bit flipped at {at}"), bad));
        cases.push((format!("cut at {at}"), sealed[..at].to_vec()));
    }
    let mut longer = sealed.clone();
    longer.push(0);
    cases.push(("a byte after the end".into(), longer));
    // The final chunk twice: a second authentic final chunk.
    let last = header.chunk_offset(4) as usize;
    let mut twice = sealed.clone();
    twice.extend_from_slice(&sealed[last..]);
    cases.push(("the final chunk twice".into(), twice));
    // Chunks 1 and 2 swapped: reordering, named as such.
    let (c1, c2, c3) = (
        header.chunk_offset(1) as usize,
        header.chunk_offset(2) as usize,
        header.chunk_offset(3) as usize,
    );
    let swapped = [&sealed[..c1], &sealed[c2..c3], &sealed[c1..c2], &sealed[c3..]].concat();
    cases.push(("chunks 1 and 2 swapped".into(), swapped));
    let mut failures = 0;
    for (what, bad) in &cases {
        for &(first, end) in &ranges {
            let (read, in_place) = both_ways(bad, &header, &key, first, end);
            failures += usize::from(read.is_err());
            assert_eq!(in_place, read, "{what}, chunks {first}..{end:?}");
        }
    }
    // Most of these damage some range read; the comparison is not vacuous.
    assert!(failures > cases.len(), "only {failures} failed reads");
}
