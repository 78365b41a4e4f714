//! Golden test vectors (crypto/tests/vectors/): fixed keys, salt and
//! plaintext → exact sealed bytes, plus malformed objects with the exact
//! error each must produce.
//!
//! `cargo test -p vaultline-crypto --test vectors` checks that the writer
//! still produces the committed bytes, and that opening every committed file
//! gives the recorded plaintext or error. After a deliberate format change,
//! `VAULTLINE_WRITE_VECTORS=1 cargo test -p vaultline-crypto --test vectors`
//! rewrites them (and the diff must then be reviewed).
//!
//! Two malformed cases cannot come out of `SealedWriter` (an empty final
//! chunk after others, a second final chunk), so this file seals them by
//! hand from the recipe in FORMAT.md §3 and §5: HKDF labels, nonce layout,
//! frame word. That doubles as a check that the spec matches the code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::{Value, json};
use vaultline_crypto::{
    DataKey, EncryptionContext, Error, Header, LocalKeyWrap, MasterKey, SealOptions, SealedReader,
    SealedWriter,
};

const CHUNK: u32 = 1024;

fn seq(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

fn arr32(start: u8) -> [u8; 32] {
    seq(start, 32).try_into().unwrap()
}

fn master() -> MasterKey {
    MasterKey::from_bytes(arr32(0x00))
}

fn data_key(start: u8) -> DataKey {
    DataKey::from_bytes(arr32(start))
}

fn salt(start: u8) -> [u8; 32] {
    arr32(start)
}

fn wrap_nonce(start: u8) -> [u8; 24] {
    seq(start, 24).try_into().unwrap()
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("format", "1")
        .unwrap()
        .with("host", "vector-host")
        .unwrap()
        .with("job", "vectors")
        .unwrap()
        .with("kind", "archive")
        .unwrap()
        .with("snapshot", "20260101T000000Z-00000000")
        .unwrap()
}

/// Deterministic plaintext: readable text, so a hex dump shows where chunks fall.
fn plaintext(len: usize) -> Vec<u8> {
    let line = b"vaultline test vector plaintext, line of 64 bytes ............\n";
    line.iter().copied().cycle().take(len).collect()
}

struct Params {
    key: u8,
    salt: u8,
    nonce: u8,
    chunk: u32,
}

const BASE: Params = Params {
    key: 0x40,
    salt: 0x80,
    nonce: 0xc0,
    chunk: CHUNK,
};

fn seal(p: &Params, plain: &[u8]) -> Vec<u8> {
    let wrap = LocalKeyWrap::new(&master());
    let key = data_key(p.key);
    let envelope = wrap
        .wrap_with_nonce(&key, &context(), wrap_nonce(p.nonce))
        .unwrap();
    let opts = SealOptions {
        chunk_size: p.chunk,
        salt: Some(salt(p.salt)),
    };
    let mut w = SealedWriter::with_options(Vec::new(), &key, envelope, context(), &opts).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

/// Offsets of each chunk's frame word, and of the end.
fn chunk_offsets(sealed: &[u8]) -> Vec<usize> {
    let (header, _) = Header::parse(sealed).unwrap();
    let mut at = header.payload_offset() as usize;
    let mut out = vec![];
    while at < sealed.len() {
        out.push(at);
        let word = u32::from_be_bytes(sealed[at..at + 4].try_into().unwrap());
        at += 4 + (word & 0x7fff_ffff) as usize + 16;
    }
    out.push(at);
    out
}

/// Seals one chunk by the FORMAT.md recipe alone (frame word, ciphertext, tag).
fn spec_chunk(p: &Params, counter: u64, last: bool, plain: &[u8]) -> Vec<u8> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt(p.salt)), &arr32(p.key));
    let mut payload_key = [0u8; 32];
    hk.expand(b"vaultline v1 payload key", &mut payload_key).unwrap();
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = last as u8;
    let aead = ChaCha20Poly1305::new(&Key::from(payload_key));
    let mut buf = plain.to_vec();
    let tag = aead
        .encrypt_inout_detached(&Nonce::from(nonce), &[], (&mut buf[..]).into())
        .unwrap();
    let word = plain.len() as u32 | if last { 1 << 31 } else { 0 };
    let mut out = word.to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn splice(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x01;
    bytes
}

struct Vector {
    name: &'static str,
    description: &'static str,
    bytes: Vec<u8>,
    /// `Ok(plaintext)` or the variant name of the expected error.
    expect: Result<Vec<u8>, &'static str>,
}

fn build() -> Vec<Vector> {
    let mut v = Vec::new();
    let ok = |name, description, p: &Params, plain: Vec<u8>| Vector {
        name,
        description,
        bytes: seal(p, &plain),
        expect: Ok(plain),
    };
    v.push(ok(
        "empty",
        "empty plaintext: one empty final chunk",
        &BASE,
        vec![],
    ));
    v.push(ok(
        "hello",
        "16-byte plaintext in one final chunk",
        &BASE,
        b"hello, vaultline".to_vec(),
    ));
    v.push(ok(
        "exact-two-chunks",
        "2048 bytes at chunk size 1024: a full non-final chunk, then a full final chunk",
        &BASE,
        plaintext(2048),
    ));
    let multi_plain = plaintext(3 * CHUNK as usize + 100);
    let multi = seal(&BASE, &multi_plain);
    v.push(Vector {
        name: "multi-chunk",
        description: "3172 bytes at chunk size 1024: three full chunks and a 100-byte final chunk; \
                      the malformed vectors below are derived from it",
        bytes: multi.clone(),
        expect: Ok(multi_plain.clone()),
    });
    v.push(ok(
        "default-chunk-size",
        "65537 bytes at the default chunk size 65536",
        &Params { chunk: 65536, ..BASE },
        plaintext(65537),
    ));

    let (header, header_len) = Header::parse(&multi).unwrap();
    let off = chunk_offsets(&multi);
    let ctx_at = 78; // magic 8 + version 2 + chunk size 4 + salt 32 + commitment 32
    let mac_at = ctx_at + context().to_bytes().len();
    let bad = |name, description, bytes, error| Vector {
        name,
        description,
        bytes,
        expect: Err(error),
    };

    v.push(bad(
        "bad-magic",
        "first byte altered",
        flip(multi.clone(), 0),
        "BadMagic",
    ));
    let mut version = multi.clone();
    version[9] = 2;
    v.push(bad(
        "unsupported-version",
        "format version 2",
        version,
        "UnsupportedVersion",
    ));
    v.push(bad(
        "header-truncated",
        "only the first 60 bytes",
        multi[..60].to_vec(),
        "HeaderTruncated",
    ));
    let mut chunk_size = multi.clone();
    chunk_size[10..14].copy_from_slice(&1000u32.to_be_bytes());
    v.push(bad(
        "chunk-size-invalid",
        "chunk size 1000 (not a power of two)",
        chunk_size,
        "MalformedHeader",
    ));
    v.push(bad(
        "salt-altered",
        "one bit of the salt flipped",
        flip(multi.clone(), 14),
        "WrongKey",
    ));
    v.push(bad(
        "commitment-altered",
        "one bit of the commitment flipped",
        flip(multi.clone(), 46),
        "WrongKey",
    ));
    v.push(bad(
        "context-altered",
        "one bit of an encryption-context value flipped; the local wrap binds the context, so \
         unwrapping fails first (opened with the data key itself it is HeaderTampered)",
        flip(multi.clone(), ctx_at + 2 + 2 + 6 + 2),
        "UnwrapFailed",
    ));
    v.push(bad(
        "mac-altered",
        "one bit of the header MAC flipped",
        flip(multi.clone(), mac_at),
        "HeaderTampered",
    ));
    v.push(bad(
        "wrapped-key-altered",
        "one bit of the local wrapped data key flipped",
        flip(multi.clone(), header_len - 20),
        "UnwrapFailed",
    ));
    // Another object's envelope, wrapped for the same context: it unwraps, but
    // to a different data key, which the commitment catches.
    let other = seal(
        &Params {
            key: 0x10,
            salt: 0x90,
            nonce: 0xd0,
            chunk: CHUNK,
        },
        &multi_plain,
    );
    let (other_header, other_len) = Header::parse(&other).unwrap();
    let swapped = header
        .with_envelope(other_header.envelope().clone())
        .unwrap()
        .to_bytes();
    v.push(bad(
        "envelope-swapped",
        "the key envelope of another object sealed under the same context",
        splice(&[&swapped, &multi[header_len..]]),
        "WrongKey",
    ));
    v.push(bad(
        "header-moved",
        "this object's header in front of another object's payload",
        splice(&[&multi[..header_len], &other[other_len..]]),
        "PayloadMismatch",
    ));
    v.push(bad(
        "truncated-after-header",
        "header and binding tag only, no chunks",
        multi[..off[0]].to_vec(),
        "Truncated",
    ));
    v.push(bad(
        "chunk-bit-flip-middle",
        "one ciphertext bit of chunk 1 flipped",
        flip(multi.clone(), off[1] + 4 + 500),
        "ChunkTampered",
    ));
    v.push(bad(
        "chunk-bit-flip-last",
        "one ciphertext bit of the final chunk flipped",
        flip(multi.clone(), off[3] + 4 + 50),
        "ChunkTampered",
    ));
    v.push(bad(
        "tag-altered",
        "one bit of chunk 0's tag flipped",
        flip(multi.clone(), off[1] - 1),
        "ChunkTampered",
    ));
    v.push(bad(
        "truncated-at-chunk-boundary",
        "the final chunk removed",
        multi[..off[3]].to_vec(),
        "Truncated",
    ));
    v.push(bad(
        "truncated-mid-chunk",
        "cut inside chunk 2",
        multi[..off[2] + 300].to_vec(),
        "Truncated",
    ));
    let c = |i: usize| &multi[off[i]..off[i + 1]];
    v.push(bad(
        "chunks-reordered",
        "chunks 1 and 2 swapped",
        splice(&[&multi[..off[0]], c(0), c(2), c(1), c(3)]),
        "ChunkOutOfOrder",
    ));
    v.push(bad(
        "chunk-duplicated",
        "chunk 1 repeated",
        splice(&[&multi[..off[0]], c(0), c(1), c(1), c(2), c(3)]),
        "ChunkReplayed",
    ));
    v.push(bad(
        "chunk-removed",
        "chunk 1 removed",
        splice(&[&multi[..off[0]], c(0), c(2), c(3)]),
        "ChunkOutOfOrder",
    ));
    v.push(bad(
        "two-final-chunks",
        "an authentic final chunk sealed as chunk 4 appended after the final chunk 3",
        splice(&[&multi, &spec_chunk(&BASE, 4, true, b"more")]),
        "MultipleFinalChunks",
    ));
    // 3072 bytes whose last full chunk is sealed non-final, then an empty final
    // chunk: authentic, but writers never produce it.
    let full = plaintext(3 * CHUNK as usize);
    let full_sealed = seal(&BASE, &full);
    let full_off = chunk_offsets(&full_sealed);
    v.push(bad(
        "empty-final-chunk",
        "three full non-final chunks followed by an empty final chunk",
        splice(&[
            &full_sealed[..full_off[2]],
            &spec_chunk(&BASE, 2, false, &full[2048..]),
            &spec_chunk(&BASE, 3, true, &[]),
        ]),
        "EmptyFinalChunk",
    ));
    v.push(bad(
        "trailing-garbage",
        "three bytes appended after the final chunk",
        splice(&[&multi, b"xyz"]),
        "TrailingData",
    ));
    let mut oversized = multi.clone();
    oversized[off[1]..off[1] + 4].copy_from_slice(&2000u32.to_be_bytes());
    v.push(bad(
        "frame-oversized",
        "chunk 1's frame word declares 2000 bytes at chunk size 1024",
        oversized,
        "MalformedChunk",
    ));
    let mut final_early = multi.clone();
    final_early[off[1]] |= 0x80;
    v.push(bad(
        "final-flag-set-early",
        "chunk 1's frame word marked final",
        final_early,
        "ChunkTampered",
    ));
    let mut final_cleared = multi.clone();
    final_cleared[off[3]] &= 0x7f;
    v.push(bad(
        "final-flag-cleared",
        "the final chunk's frame word marked non-final",
        final_cleared,
        "MalformedChunk",
    ));
    v
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Opens `bytes` with the vector master key; the plaintext or the error.
fn open(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let wrap = LocalKeyWrap::new(&master());
    let (_, mut reader) = SealedReader::open(bytes, &wrap)?;
    let mut out = Vec::new();
    match reader.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => match Error::from_io(&e) {
            Some(_) => Err(e.into_inner().unwrap().downcast::<Error>().map(|b| *b).unwrap()),
            None => Err(Error::Io(e)),
        },
    }
}

fn variant(e: &Error) -> String {
    let dbg = format!("{e:?}");
    dbg.split([' ', '(', '{']).next().unwrap().to_string()
}

fn manifest_entry(v: &Vector) -> Value {
    let mut entry = BTreeMap::new();
    entry.insert("name", json!(v.name));
    entry.insert("file", json!(format!("{}.sealed", v.name)));
    entry.insert("description", json!(v.description));
    match &v.expect {
        Ok(plain) => {
            entry.insert("result", json!("ok"));
            entry.insert("plaintext_len", json!(plain.len()));
            entry.insert("plaintext_sha256", json!(sha256_hex(plain)));
            if plain.len() < 64 {
                entry.insert("plaintext_hex", json!(hex::encode(plain)));
            }
        }
        Err(name) => {
            let err = open(&v.bytes).expect_err(v.name);
            entry.insert("result", json!("error"));
            entry.insert("error", json!(name));
            entry.insert("message", json!(err.to_string()));
        }
    }
    json!(entry)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn manifest(vectors: &[Vector]) -> String {
    let doc = json!({
        "about": "vaultline sealed-object test vectors; see README.md in this directory and docs/FORMAT.md",
        "master_key": hex::encode(arr32(0x00)),
        "data_key": hex::encode(arr32(BASE.key)),
        "salt": hex::encode(salt(BASE.salt)),
        "wrap_nonce": hex::encode(wrap_nonce(BASE.nonce)),
        "chunk_size": CHUNK,
        "context": context().iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "plaintext_pattern": "unless a vector gives plaintext_hex: the 63-byte line 'vaultline test vector plaintext, line of 64 bytes ............\\n' repeated and cut to length",
        "vectors": vectors.iter().map(manifest_entry).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

#[test]
fn committed_vectors_match_writer_and_reader() {
    let vectors = build();
    let dir = vectors_dir();
    if std::env::var_os("VAULTLINE_WRITE_VECTORS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for v in &vectors {
            fs::write(dir.join(format!("{}.sealed", v.name)), &v.bytes).unwrap();
        }
        fs::write(dir.join("vectors.json"), manifest(&vectors)).unwrap();
    }
    // The writer still produces exactly the committed bytes …
    for v in &vectors {
        let committed = fs::read(dir.join(format!("{}.sealed", v.name)))
            .unwrap_or_else(|e| panic!("{}: {e} (run with VAULTLINE_WRITE_VECTORS=1 once)", v.name));
        assert!(
            committed == v.bytes,
            "vector {} differs from the committed bytes",
            v.name
        );
    }
    // … and the manifest (with every expected message) is unchanged.
    let committed_manifest = fs::read_to_string(dir.join("vectors.json")).unwrap();
    assert_eq!(committed_manifest, manifest(&vectors));
}

#[test]
fn every_committed_vector_opens_as_recorded() {
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(vectors_dir().join("vectors.json")).unwrap()).unwrap();
    let entries = manifest["vectors"].as_array().unwrap();
    assert!(
        entries.len() >= 30,
        "expected the full vector set, found {}",
        entries.len()
    );
    for entry in entries {
        let name = entry["name"].as_str().unwrap();
        let bytes = fs::read(vectors_dir().join(entry["file"].as_str().unwrap())).unwrap();
        match (entry["result"].as_str().unwrap(), open(&bytes)) {
            ("ok", Ok(plain)) => {
                assert_eq!(
                    plain.len() as u64,
                    entry["plaintext_len"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    sha256_hex(&plain),
                    entry["plaintext_sha256"].as_str().unwrap(),
                    "{name}"
                );
            }
            ("error", Err(err)) => {
                assert_eq!(variant(&err), entry["error"].as_str().unwrap(), "{name}: {err}");
                assert_eq!(err.to_string(), entry["message"].as_str().unwrap(), "{name}");
            }
            (want, got) => panic!("{name}: expected {want}, got {got:?}"),
        }
    }
}
