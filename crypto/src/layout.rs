//! The format's fixed numbers (docs/FORMAT.md §2 and §5): magic, version,
//! sizes and limits. Both the header parser and the chunk stream use them;
//! keeping them here, below both, is what keeps the two modules from
//! importing each other.

/// The 8 magic bytes that open every sealed object: `\x89VLT\r\n\x1a\n`.
/// Like PNG's, they catch text-mode mangling (CR/LF, the high bit, ^Z).
pub const MAGIC: [u8; 8] = [0x89, b'V', b'L', b'T', b'\r', b'\n', 0x1a, b'\n'];
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Default plaintext bytes per chunk: 64 KiB, as age uses. Measured in the
/// `seal` benchmark: large enough that per-chunk costs (nonce, frame word,
/// tag, one write call) stay far below 1 % of the work.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest chunk size a header may declare (1 KiB).
pub const MIN_CHUNK_SIZE: u32 = 1 << 10;
/// Largest chunk size a header may declare (16 MiB): bounds the reader's
/// buffer, so a hostile header cannot make it allocate more.
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;
/// Size of the header MAC tag and of the salt and commitment.
pub const MAC_SIZE: usize = 32;
/// Size of the binding tag that opens the payload (FORMAT.md §5.1).
pub const BINDING_SIZE: usize = 16;
/// Longest provider id.
pub const MAX_PROVIDER_LEN: usize = 64;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 2048;
/// Longest wrapped key.
pub const MAX_WRAPPED_LEN: usize = 8192;
/// An upper bound on any valid header's length; a reader fetching a header
/// with one ranged request can ask for this many bytes.
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// Size of the Poly1305 tag that ends every chunk.
pub const TAG_SIZE: usize = 16;
/// Size of the frame word that starts every chunk.
pub const FRAME_SIZE: usize = 4;
