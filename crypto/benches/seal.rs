//! Throughput of sealing and opening 256 MiB, beside the raw
//! `chacha20poly1305` crate encrypting the same bytes in place in equal
//! 64 KiB chunks, measured in the same run (issue: seal and open ≥ 0.9× raw).
//!
//! Run: `cargo bench -p vaultline-crypto --bench seal`. Criterion prints
//! GiB/s for each of `raw_chacha20poly1305_in_place`, `seal` and `open`.
//! `seal` is fed 1 MiB writes and `open` reads from an in-memory slice into a
//! 1 MiB buffer, the shapes the agent's pipeline uses (zstd in front of the
//! writer, a buffered object reader behind the reader).

#![allow(clippy::expect_used)] // a benchmark that cannot set up should stop loudly

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::Duration;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vaultline_crypto::{
    ChunkNonce, DEFAULT_CHUNK_SIZE, DataKey, EncryptionContext, KeyEnvelope, SealedReader, SealedWriter,
};

const TOTAL: usize = 256 << 20;

fn input() -> Vec<u8> {
    // Content does not affect ChaCha20 speed; a cheap non-constant pattern.
    (0..TOTAL)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect()
}

fn envelope() -> KeyEnvelope {
    KeyEnvelope {
        provider: "local".into(),
        key_id: "bench".into(),
        wrapped: vec![0; 73],
    }
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("job", "bench")
        .expect("valid context")
}

fn throughput(c: &mut Criterion) {
    let plain = input();
    let key = DataKey::from_bytes([7; 32]);
    let mut group = c.benchmark_group("256MiB");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    // Baseline: the AEAD alone, in place, in 64 KiB chunks, nothing else.
    let mut buf = plain.clone();
    let aead = ChaCha20Poly1305::new(&Key::from([9; 32]));
    group.bench_function("raw_chacha20poly1305_in_place", |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(DEFAULT_CHUNK_SIZE as usize).enumerate() {
                let nonce = Nonce::from(ChunkNonce::new(i as u64, false).to_bytes());
                let tag = aead
                    .encrypt_inout_detached(&nonce, &[], chunk.into())
                    .expect("encrypt");
                black_box(tag);
            }
        })
    });

    // seal: plaintext in 1 MiB writes (like a zstd encoder's output) into a sink.
    group.bench_function("seal", |b| {
        b.iter(|| {
            let mut w = SealedWriter::new(io::sink(), &key, envelope(), context()).expect("writer");
            for piece in plain.chunks(1 << 20) {
                w.write_all(piece).expect("write");
            }
            w.finish().expect("finish");
        })
    });

    let mut sealed = SealedWriter::new(
        Vec::with_capacity(TOTAL + TOTAL / 1000),
        &key,
        envelope(),
        context(),
    )
    .expect("writer");
    sealed.write_all(&plain).expect("write");
    let sealed = sealed.finish().expect("finish");
    let (header, used) = vaultline_crypto::Header::parse(&sealed).expect("header");
    let mut out = vec![0u8; 1 << 20];
    group.bench_function("open", |b| {
        b.iter(|| {
            let mut r = SealedReader::new(&sealed[used..], &header, &key).expect("reader");
            loop {
                let n = r.read(&mut out).expect("read");
                if n == 0 {
                    break;
                }
                black_box(&out[..n]);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
