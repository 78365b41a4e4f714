//! The vaultline sealed-object format.
//!
//! Everything vaultline stores (archives, manifests, audit segments) is a
//! *sealed object*: a header followed by a chunked, authenticated payload.
//! This crate knows bytes and keys only: no files, no S3, no KMS. The byte
//! layout is specified in `docs/FORMAT.md`; section numbers (§) below refer
//! to it.
//!
//! # How the pieces fit
//!
//! - A [`KeyWrap`] provider makes a fresh [`DataKey`] per object and wraps it
//!   into a [`KeyEnvelope`], bound to the object's [`EncryptionContext`]
//!   (host, job, snapshot, object kind, format version). [`LocalKeyWrap`]
//!   does this with a local [`MasterKey`]; the agent implements the trait for
//!   AWS KMS.
//! - A [`SealedWriter`] writes the [`Header`] (§2) and then seals the
//!   plaintext in chunks (§5). From the data key and the header's random salt
//!   it derives, with HKDF-SHA256 (§3), the payload key, the header MAC key
//!   and a key commitment.
//! - A [`SealedReader`] parses the header, gets the data key back from the
//!   envelope, and releases plaintext only after it has checked the key
//!   commitment (a wrong key is reported as [`Error::WrongKey`]), the header
//!   MAC ([`Error::HeaderTampered`]), the payload's binding to the header
//!   ([`Error::PayloadMismatch`]), and each chunk in turn. Truncation,
//!   reordering, duplication, extra final chunks and trailing bytes each have
//!   their own [`Error`] variant.
//!
//! ```
//! use std::io::{Read, Write};
//! use vaultline_crypto::{EncryptionContext, KeyWrap, LocalKeyWrap, MasterKey, SealedReader, SealedWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = LocalKeyWrap::new(&MasterKey::generate()?);
//! let context = EncryptionContext::new().with("job", "etc")?;
//! let (data_key, envelope) = provider.generate(&context)?;
//!
//! let mut writer = SealedWriter::new(Vec::new(), &data_key, envelope, context)?;
//! writer.write_all(b"hello")?;
//! let sealed = writer.finish()?;
//!
//! let (header, mut reader) = SealedReader::open(&sealed[..], &provider)?;
//! let mut plaintext = Vec::new();
//! reader.read_to_end(&mut plaintext)?;
//! assert_eq!(plaintext, b"hello");
//! assert_eq!(header.context().get("job"), Some("etc"));
//! # Ok(()) }
//! ```
//!
//! Secret types ([`DataKey`], [`MasterKey`], the derived keys) are zeroized
//! on drop and print as `[redacted]` or by fingerprint only.

mod context;
mod error;
mod header;
mod keys;
mod layout;
mod stream;
mod wrap;

pub use context::{EncryptionContext, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_KEY_LEN, MAX_CONTEXT_VALUE_LEN};
pub use error::{Error, Result};
pub use header::Header;
pub use keys::{DataKey, KEY_SIZE, KeyEnvelope};
pub use layout::{
    BINDING_SIZE, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, FRAME_SIZE, MAC_SIZE, MAGIC, MAX_CHUNK_SIZE,
    MAX_HEADER_LEN, MIN_CHUNK_SIZE, TAG_SIZE,
};
pub use stream::{ChunkNonce, SealOptions, SealedReader, SealedWriter, open_in_place};
pub use wrap::{KeyWrap, LOCAL_PROVIDER, LOCAL_WRAPPED_LEN, LocalKeyWrap, MasterKey};
