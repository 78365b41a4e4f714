//! The sealed-object header (FORMAT.md §2): parsing, encoding, and the
//! checks that tie it to a data key.
//!
//! The header has two parts. The *authenticated part* (magic, version, chunk
//! size, salt, key commitment, encryption context) ends with an HMAC-SHA256
//! tag keyed from the data key. The *key envelope* that follows it (provider,
//! key id, wrapped data key) is deliberately outside the MAC, so a data key can
//! be re-wrapped under a new provider key by rewriting only the envelope, even
//! for objects whose payload sits in cold storage. Altering the envelope cannot
//! make a wrong key acceptable: whatever key it unwraps to must match the
//! commitment, which the MAC covers.
//!
//! Opening checks, in order: the commitment (is this the object's data key?),
//! then the MAC (is the authenticated part intact?). Only then does the
//! [`SealedReader`](crate::SealedReader) release any plaintext.

use std::io::{self, Read};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::context::{EncryptionContext, MAX_CONTEXT_ENTRIES};
use crate::error::{Error, Result};
use crate::keys::{DataKey, DerivedKeys, KEY_SIZE, KeyEnvelope};
use crate::layout::{
    BINDING_SIZE, FORMAT_VERSION, FRAME_SIZE, MAC_SIZE, MAGIC, MAX_CHUNK_SIZE, MAX_KEY_ID_LEN,
    MAX_PROVIDER_LEN, MAX_WRAPPED_LEN, MIN_CHUNK_SIZE, TAG_SIZE,
};

/// A parsed header. Parsing checks structure only; [`SealedReader::new`]
/// (crate::SealedReader::new) checks it against the data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    chunk_size: u32,
    salt: [u8; KEY_SIZE],
    commitment: [u8; KEY_SIZE],
    context: EncryptionContext,
    mac: [u8; MAC_SIZE],
    envelope: KeyEnvelope,
    /// The authenticated part exactly as encoded, the MAC's input.
    authenticated: Vec<u8>,
}

impl Header {
    /// Builds and authenticates the header for a new object, returning the
    /// derived keys the writer seals with.
    pub(crate) fn seal(
        key: &DataKey,
        envelope: KeyEnvelope,
        context: EncryptionContext,
        chunk_size: u32,
        salt: [u8; KEY_SIZE],
    ) -> Result<(Header, DerivedKeys)> {
        check_chunk_size(chunk_size)?;
        check_envelope(&envelope)?;
        let keys = key.derive(&salt);
        let mut authenticated = Vec::with_capacity(128);
        authenticated.extend_from_slice(&MAGIC);
        authenticated.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        authenticated.extend_from_slice(&chunk_size.to_be_bytes());
        authenticated.extend_from_slice(&salt);
        authenticated.extend_from_slice(&keys.commitment);
        authenticated.extend_from_slice(&context.to_bytes());
        let mac = header_mac(&keys, &authenticated);
        let header = Header {
            chunk_size,
            salt,
            commitment: keys.commitment,
            context,
            mac,
            envelope,
            authenticated,
        };
        Ok((header, keys))
    }

    /// Reads one header from the start of `r`, leaving `r` at the payload.
    pub fn read_from<R: Read>(r: &mut R) -> Result<Header> {
        let mut p = FieldReader {
            r,
            raw: Vec::with_capacity(128),
        };
        let magic: [u8; 8] = p.array("magic")?;
        if magic != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u16::from_be_bytes(p.array("version")?);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let chunk_size = u32::from_be_bytes(p.array("chunk_size")?);
        check_chunk_size(chunk_size)?;
        let salt = p.array("salt")?;
        let commitment = p.array("commitment")?;
        let count = u16::from_be_bytes(p.array("context.count")?) as usize;
        if count > MAX_CONTEXT_ENTRIES {
            return Err(malformed(
                "context.count",
                format!("{count} entries, at most {MAX_CONTEXT_ENTRIES} allowed"),
            ));
        }
        let mut context = EncryptionContext::new();
        for _ in 0..count {
            let key = p.string16("context.key", 1, crate::context::MAX_CONTEXT_KEY_LEN)?;
            let value = p.string16("context.value", 0, crate::context::MAX_CONTEXT_VALUE_LEN)?;
            context
                .push_decoded(key, value)
                .map_err(|reason| malformed("context", reason))?;
        }
        let authenticated = std::mem::take(&mut p.raw);
        let mac = p.array("mac")?;
        let provider_len = p.array::<1>("envelope.provider")?[0] as usize;
        let provider = p.string("envelope.provider", provider_len, 1, MAX_PROVIDER_LEN)?;
        let key_id_len = u16::from_be_bytes(p.array("envelope.key_id")?) as usize;
        let key_id = p.string("envelope.key_id", key_id_len, 1, MAX_KEY_ID_LEN)?;
        let wrapped_len = u16::from_be_bytes(p.array("envelope.wrapped_key")?) as usize;
        let wrapped = p.bytes("envelope.wrapped_key", wrapped_len, 1, MAX_WRAPPED_LEN)?;
        let envelope = KeyEnvelope {
            provider,
            key_id,
            wrapped,
        };
        check_envelope(&envelope)?;
        Ok(Header {
            chunk_size,
            salt,
            commitment,
            context,
            mac,
            envelope,
            authenticated,
        })
    }

    /// Parses a header from the start of `bytes`; returns it and its length.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize)> {
        let mut cursor = io::Cursor::new(bytes);
        let header = Header::read_from(&mut cursor)?;
        Ok((header, cursor.position() as usize))
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.authenticated);
        out.extend_from_slice(&self.mac);
        let e = &self.envelope;
        // Lengths fit: check_envelope bounds them.
        out.push(e.provider.len() as u8);
        out.extend_from_slice(e.provider.as_bytes());
        out.extend_from_slice(&(e.key_id.len() as u16).to_be_bytes());
        out.extend_from_slice(e.key_id.as_bytes());
        out.extend_from_slice(&(e.wrapped.len() as u16).to_be_bytes());
        out.extend_from_slice(&e.wrapped);
        out
    }

    /// Length of the encoded header in bytes.
    pub fn encoded_len(&self) -> usize {
        let e = &self.envelope;
        self.authenticated.len() + MAC_SIZE + 1 + e.provider.len() + 2 + e.key_id.len() + 2 + e.wrapped.len()
    }

    /// Offset of the first chunk's frame word from the start of the object.
    pub fn payload_offset(&self) -> u64 {
        (self.encoded_len() + BINDING_SIZE) as u64
    }

    /// Offset from the start of the object of chunk `index`'s frame word:
    /// every chunk before it is full (FORMAT.md §5.3).
    pub fn chunk_offset(&self, index: u64) -> u64 {
        let sealed_chunk = (FRAME_SIZE + self.chunk_size as usize + TAG_SIZE) as u64;
        // Saturating: an index past any object (from a damaged table) is
        // an offset past its end, which fails to read, not an overflow.
        self.payload_offset()
            .saturating_add(index.saturating_mul(sealed_chunk))
    }

    /// The same header with another key envelope (re-wrapping the data key).
    /// The authenticated part and MAC are unchanged, so the payload still opens.
    pub fn with_envelope(&self, envelope: KeyEnvelope) -> Result<Header> {
        check_envelope(&envelope)?;
        Ok(Header {
            envelope,
            ..self.clone()
        })
    }

    /// Plaintext bytes per (non-final) chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The encryption context.
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }

    /// The key envelope (provider, key id, wrapped data key).
    pub fn envelope(&self) -> &KeyEnvelope {
        &self.envelope
    }

    /// The binding tag the payload must start with (FORMAT.md §5.1).
    pub fn binding(&self) -> [u8; BINDING_SIZE] {
        let mut b = [0; BINDING_SIZE];
        b.copy_from_slice(&self.mac[..BINDING_SIZE]);
        b
    }

    /// Checks that `key` is this object's data key (commitment) and that the
    /// authenticated part is intact (MAC), and returns the derived keys.
    pub(crate) fn verify(&self, key: &DataKey) -> Result<DerivedKeys> {
        let keys = key.derive(&self.salt);
        if !bool::from(keys.commitment.ct_eq(&self.commitment)) {
            return Err(Error::WrongKey);
        }
        let expected = header_mac(&keys, &self.authenticated);
        if !bool::from(expected.ct_eq(&self.mac)) {
            return Err(Error::HeaderTampered);
        }
        Ok(keys)
    }
}

fn header_mac(keys: &DerivedKeys, authenticated: &[u8]) -> [u8; MAC_SIZE] {
    // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&keys.header_mac) else {
        return [0; MAC_SIZE];
    };
    mac.update(authenticated);
    mac.finalize().into_bytes().into()
}

fn check_chunk_size(chunk_size: u32) -> Result<()> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(malformed(
            "chunk_size",
            format!("{chunk_size} is not a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}"),
        ));
    }
    Ok(())
}

fn check_envelope(e: &KeyEnvelope) -> Result<()> {
    if e.provider.is_empty()
        || e.provider.len() > MAX_PROVIDER_LEN
        || !e
            .provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(malformed(
            "envelope.provider",
            format!(
                "{:?} is not 1 to {MAX_PROVIDER_LEN} characters of [a-z0-9-]",
                e.provider
            ),
        ));
    }
    if e.key_id.is_empty() || e.key_id.len() > MAX_KEY_ID_LEN {
        return Err(malformed(
            "envelope.key_id",
            format!("must be 1 to {MAX_KEY_ID_LEN} bytes"),
        ));
    }
    if e.wrapped.is_empty() || e.wrapped.len() > MAX_WRAPPED_LEN {
        return Err(malformed(
            "envelope.wrapped_key",
            format!("must be 1 to {MAX_WRAPPED_LEN} bytes, found {}", e.wrapped.len()),
        ));
    }
    Ok(())
}

fn malformed(field: &'static str, reason: impl Into<String>) -> Error {
    Error::MalformedHeader {
        field,
        reason: reason.into(),
    }
}

/// Reads header fields, keeping the raw bytes of the authenticated part.
struct FieldReader<'a, R> {
    r: &'a mut R,
    raw: Vec<u8>,
}

impl<R: Read> FieldReader<'_, R> {
    fn fill(&mut self, field: &'static str, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::HeaderTruncated { field },
            _ => Error::Io(e),
        })?;
        self.raw.extend_from_slice(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut buf = [0; N];
        self.fill(field, &mut buf)?;
        Ok(buf)
    }

    fn bytes(&mut self, field: &'static str, len: usize, min: usize, max: usize) -> Result<Vec<u8>> {
        if len < min || len > max {
            return Err(malformed(
                field,
                format!("length {len} is outside {min} to {max}"),
            ));
        }
        let mut buf = vec![0; len];
        self.fill(field, &mut buf)?;
        Ok(buf)
    }

    fn string(&mut self, field: &'static str, len: usize, min: usize, max: usize) -> Result<String> {
        let bytes = self.bytes(field, len, min, max)?;
        String::from_utf8(bytes).map_err(|_| malformed(field, "not valid UTF-8"))
    }

    fn string16(&mut self, field: &'static str, min: usize, max: usize) -> Result<String> {
        let len = u16::from_be_bytes(self.array(field)?) as usize;
        self.string(field, len, min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DEFAULT_CHUNK_SIZE;

    fn sample() -> (Header, DataKey) {
        let key = DataKey::from_bytes([1; KEY_SIZE]);
        let envelope = KeyEnvelope {
            provider: "local".into(),
            key_id: "k1".into(),
            wrapped: vec![9; 73],
        };
        let ctx = EncryptionContext::new().with("job", "etc").unwrap();
        let (h, _) = Header::seal(&key, envelope, ctx, DEFAULT_CHUNK_SIZE, [2; KEY_SIZE]).unwrap();
        (h, key)
    }

    #[test]
    fn round_trips_and_verifies() {
        let (h, key) = sample();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), h.encoded_len());
        let (parsed, used) = Header::parse(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(parsed, h);
        parsed.verify(&key).unwrap();
    }

    #[test]
    fn every_truncation_is_header_truncated() {
        let bytes = sample().0.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                matches!(Header::parse(&bytes[..cut]), Err(Error::HeaderTruncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn envelope_is_replaceable_without_breaking_the_mac() {
        let (h, key) = sample();
        let other = KeyEnvelope {
            provider: "aws-kms".into(),
            key_id: "arn:x".into(),
            wrapped: vec![1; 200],
        };
        let rewrapped = h.with_envelope(other.clone()).unwrap();
        let (parsed, _) = Header::parse(&rewrapped.to_bytes()).unwrap();
        assert_eq!(parsed.envelope(), &other);
        parsed.verify(&key).unwrap();
        assert_eq!(parsed.binding(), h.binding());
    }

    #[test]
    fn bad_chunk_size_and_provider_rejected() {
        let (h, _) = sample();
        let mut bytes = h.to_bytes();
        bytes[10..14].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&bytes),
            Err(Error::MalformedHeader {
                field: "chunk_size",
                ..
            })
        ));
        let bad = KeyEnvelope {
            provider: "AWS KMS".into(),
            key_id: "k".into(),
            wrapped: vec![1],
        };
        assert!(matches!(
            h.with_envelope(bad),
            Err(Error::MalformedHeader {
                field: "envelope.provider",
                ..
            })
        ));
    }
}
