//! The crate's error type.
//!
//! Every way a sealed object can be rejected has its own variant, so that the
//! agent (and its tests) can tell a wrong key from an altered header, a
//! truncated stream from reordered chunks, and report each precisely. Offsets
//! are byte offsets from the start of the sealed object, so an operator can
//! find the damaged spot with `cmp` or `xxd`.
//!
//! When a [`SealedReader`](crate::SealedReader) fails inside `io::Read`, the
//! `io::Error` it returns wraps one of these; [`Error::from_io`] gets it back.

use std::io;

/// Everything that can go wrong while sealing, opening or (un)wrapping keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first bytes are not the sealed-object magic (FORMAT.md §2).
    #[error("not a vaultline sealed object: the first 8 bytes are not the sealed-object magic")]
    BadMagic,

    /// The header's format version is not one this build reads.
    #[error("unsupported sealed format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version found in the header.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },

    /// The object ended inside its header.
    #[error("sealed header is truncated: the object ends inside field `{field}`")]
    HeaderTruncated {
        /// The header field being read when the data ran out.
        field: &'static str,
    },

    /// A header field holds a value the format does not allow.
    #[error("sealed header field `{field}` is invalid: {reason}")]
    MalformedHeader {
        /// The header field.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },

    /// The key commitment in the header does not match the data key: the data
    /// key belongs to another object (wrong key, a wrapped key swapped in from
    /// another object), or the salt/commitment bytes were altered.
    #[error(
        "key commitment mismatch: the data key does not belong to this object \
         (wrong key, a wrapped key taken from another object, or an altered salt/commitment)"
    )]
    WrongKey,

    /// The data key is right but the authenticated part of the header (chunk
    /// size, salt, commitment, encryption context) was altered.
    #[error("sealed header failed authentication: its chunk size, salt or encryption context was altered")]
    HeaderTampered,

    /// The payload starts with another header's binding tag: a header was
    /// moved onto a payload it was not sealed with.
    #[error(
        "payload at offset {offset} does not belong to this header (a header was moved onto another object's payload)"
    )]
    PayloadMismatch {
        /// Offset of the binding tag.
        offset: u64,
    },

    /// A chunk failed authentication: its bytes were altered.
    #[error("chunk {index} at offset {offset} failed authentication: its bytes were altered")]
    ChunkTampered {
        /// Position of the chunk in the stream (0-based).
        index: u64,
        /// Offset of the chunk's frame word.
        offset: u64,
    },

    /// The chunk at `index` authenticates as chunk `sealed_as` < `index`: a
    /// chunk was duplicated.
    #[error("chunk {index} at offset {offset} is a copy of chunk {sealed_as}: chunks were duplicated")]
    ChunkReplayed {
        /// Position of the chunk in the stream.
        index: u64,
        /// The position it was sealed for.
        sealed_as: u64,
        /// Offset of the chunk's frame word.
        offset: u64,
    },

    /// The chunk at `index` authenticates as chunk `sealed_as` > `index`:
    /// chunks were reordered or some are missing.
    #[error(
        "chunk {index} at offset {offset} was sealed as chunk {sealed_as}: chunks were reordered or removed"
    )]
    ChunkOutOfOrder {
        /// Position of the chunk in the stream.
        index: u64,
        /// The position it was sealed for.
        sealed_as: u64,
        /// Offset of the chunk's frame word.
        offset: u64,
    },

    /// A chunk's frame word is impossible (FORMAT.md §5).
    #[error("chunk {index} at offset {offset} has an invalid frame: {reason}")]
    MalformedChunk {
        /// Position of the chunk in the stream.
        index: u64,
        /// Offset of the chunk's frame word.
        offset: u64,
        /// What was wrong.
        reason: String,
    },

    /// The stream ended before its final chunk.
    #[error(
        "sealed stream is truncated: it ends at offset {offset}, inside or before chunk {index}, with no final chunk"
    )]
    Truncated {
        /// The chunk that was being read.
        index: u64,
        /// Where the data ran out.
        offset: u64,
    },

    /// A final chunk with no plaintext after other chunks (writers never emit
    /// one; it would let a stream be extended by an empty chunk).
    #[error("chunk {index} at offset {offset} is an empty final chunk after other chunks")]
    EmptyFinalChunk {
        /// Position of the chunk.
        index: u64,
        /// Offset of the chunk's frame word.
        offset: u64,
    },

    /// Another authentic final chunk follows the final chunk.
    #[error("a second final chunk follows the final chunk, at offset {offset}")]
    MultipleFinalChunks {
        /// Offset of the second final chunk.
        offset: u64,
    },

    /// Bytes follow the final chunk.
    #[error("unexpected data after the final chunk, at offset {offset}")]
    TrailingData {
        /// Offset of the first extra byte.
        offset: u64,
    },

    /// The stream has more chunks than the nonce counter can number.
    #[error("sealed stream is too long: the chunk counter would overflow")]
    TooLong,

    /// An encryption context that cannot be encoded (FORMAT.md §4).
    #[error("invalid encryption context: {reason}")]
    InvalidContext {
        /// What was wrong.
        reason: String,
    },

    /// A key envelope names a different provider than the one asked to unwrap it.
    #[error(
        "the data key was wrapped by provider `{found}`, but provider `{expected}` was asked to unwrap it"
    )]
    ProviderMismatch {
        /// The provider doing the unwrap.
        expected: String,
        /// The provider named in the envelope.
        found: String,
    },

    /// The data key was wrapped under another key than the one we hold.
    #[error("this object was sealed with key {sealed_with}, but the key available is {have}")]
    KeyMismatch {
        /// Key id in the envelope.
        sealed_with: String,
        /// Key id of the key we hold.
        have: String,
    },

    /// The envelope names a key that the reader was not configured to
    /// trust: a key provider that could unwrap it (KMS decrypts under any
    /// key the caller may use) must not be asked to.
    #[error("this object's data key is wrapped by key {sealed_with}, which is not a trusted key (trusted: {})", trusted.join(", "))]
    UntrustedKey {
        /// Key id in the envelope.
        sealed_with: String,
        /// The keys the reader trusts.
        trusted: Vec<String>,
    },

    /// A wrapped key that does not have its provider's layout.
    #[error("wrapped data key for key {key_id} is malformed: {reason}")]
    MalformedWrappedKey {
        /// Key id in the envelope.
        key_id: String,
        /// What was wrong.
        reason: String,
    },

    /// The wrapping key refused the wrapped data key.
    #[error("key {key_id} could not unwrap the data key: {reason}")]
    UnwrapFailed {
        /// Key id in the envelope.
        key_id: String,
        /// Why.
        reason: String,
    },

    /// An error from a key provider implemented outside this crate (KMS).
    #[error("{provider} key {key_id}: {operation} failed")]
    Provider {
        /// Provider id, e.g. `aws-kms`.
        provider: String,
        /// The key involved.
        key_id: String,
        /// The operation, e.g. `GenerateDataKey`.
        operation: &'static str,
        /// The provider's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),

    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// The sealed-format error inside an `io::Error` returned by a
    /// [`SealedReader`](crate::SealedReader) or
    /// [`SealedWriter`](crate::SealedWriter), if it is one.
    pub fn from_io(err: &io::Error) -> Option<&Error> {
        err.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }

    /// True when the error means the sealed bytes are not authentic or not
    /// well-formed (as opposed to an I/O failure or a key-provider failure).
    /// An object whose envelope names another key than the one at hand
    /// ([`KeyMismatch`](Error::KeyMismatch)) counts: callers that know the
    /// configured key is the repository's (the agent checks its marker
    /// first) are looking at an altered or foreign object.
    pub fn is_integrity(&self) -> bool {
        !matches!(
            self,
            Error::Io(_) | Error::Provider { .. } | Error::Random(_) | Error::InvalidContext { .. }
        )
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
