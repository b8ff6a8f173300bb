//! Secrets at rest: records holding credentials (webhooks, connections, signing secrets) are
//! sealed with ChaCha20-Poly1305 under the host's secrets key before any engine stores them.
//!
//! A sealed record is `0x01 | nonce (12 bytes) | ciphertext and tag`; the tree name and the
//! record's key are the associated data, so a record cannot be moved to another id. Records
//! written before sealing existed (plain JSON, starting with `{`) are still read, and the sled
//! store seals them when it opens.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{self, LessSafeKey, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

const VERSION: u8 = 1;

/// The key records are sealed with.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(********)")
    }
}

/// Why a record could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The record was sealed under another key, or damaged.
    #[error(
        "cannot decrypt it with the configured secrets key \
         (was secrets.key or the key file changed?)"
    )]
    WrongKey,
    /// Not a record this version writes.
    #[error("unknown record format")]
    Format,
}

impl Sealer {
    /// A sealer with this 32-byte key.
    pub fn new(key: [u8; 32]) -> Sealer {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key");
        Sealer {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// Seals `plain` bound to `context` (tree and record key).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(nonce, aead::Aad::from(context), &mut body)
            .expect("sealing cannot fail for in-memory sizes");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed record. `Ok(None)` for a legacy plain record (JSON).
    ///
    /// # Errors
    /// [`SealError::WrongKey`] when the tag does not verify, [`SealError::Format`] for an
    /// unknown format.
    pub fn open(&self, context: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        match stored.first() {
            Some(b'{') => Ok(None),
            Some(&VERSION) if stored.len() >= 1 + NONCE_LEN + 16 => {
                let nonce: [u8; NONCE_LEN] = stored[1..=NONCE_LEN].try_into().expect("length");
                let mut body = stored[1 + NONCE_LEN..].to_vec();
                let plain = self
                    .key
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(context),
                        &mut body,
                    )
                    .map_err(|_| SealError::WrongKey)?;
                Ok(Some(plain.to_vec()))
            }
            _ => Err(SealError::Format),
        }
    }
}

/// Where the secrets key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Given in the configuration or environment.
    Configured,
    /// Read from this file.
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// Why the secrets key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configured key is not a key.
    #[error("secrets.key: {0}")]
    Configured(String),
    /// The key file holds something other than a key.
    #[error("key file {}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read.
    #[error("reading key file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A new key file could not be written.
    #[error("creating key file {}: {source}", file.display())]
    Create {
        /// The file.
        file: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// The secrets key: `configured` when given, else read from `file`, else generated into
/// `file` (created with mode 0600, never overwritten).
///
/// # Errors
/// When the file cannot be read or written, or holds something other than a key.
pub fn load_key(configured: Option<&str>, file: &Path) -> Result<([u8; 32], KeySource), KeyError> {
    if let Some(text) = configured {
        let key = crate::config::parse_secrets_key(text).map_err(|e| KeyError::Configured(e.0))?;
        return Ok((key, KeySource::Configured));
    }
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let key =
                crate::config::parse_secrets_key(&text).map_err(|invalid| KeyError::Invalid {
                    file: file.to_path_buf(),
                    message: invalid.0,
                })?;
            Ok((key, KeySource::File(file.to_path_buf())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            // Written aside, synced, then linked into place (never over an existing file): a
            // write that fails (a full disk) leaves no empty key file to refuse later starts.
            let aside = file.with_extension("making");
            let _ = std::fs::remove_file(&aside);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let text = base64::engine::general_purpose::STANDARD.encode(key);
            let written = options.open(&aside).and_then(|mut out| {
                out.write_all(format!("{text}\n").as_bytes())?;
                out.sync_all()
            });
            let placed = written.and_then(|()| std::fs::hard_link(&aside, file));
            let _ = std::fs::remove_file(&aside);
            placed.map_err(|source| KeyError::Create {
                file: file.to_path_buf(),
                source,
            })?;
            Ok((key, KeySource::Generated(file.to_path_buf())))
        }
        Err(source) => Err(KeyError::Read {
            file: file.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_context() {
        let sealer = Sealer::new([7; 32]);
        let sealed = sealer.seal(b"connections:a", br#"{"token":"s3cret"}"#);
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            sealer.open(b"connections:a", &sealed).unwrap().unwrap(),
            br#"{"token":"s3cret"}"#
        );
        // Another record's id, another key, a flipped bit: refused.
        assert_eq!(
            sealer.open(b"connections:b", &sealed),
            Err(SealError::WrongKey)
        );
        assert_eq!(
            Sealer::new([8; 32]).open(b"connections:a", &sealed),
            Err(SealError::WrongKey)
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(
            sealer.open(b"connections:a", &damaged),
            Err(SealError::WrongKey)
        );
        // Two seals of the same record differ (fresh nonce).
        assert_ne!(sealer.seal(b"c", b"x"), sealer.seal(b"c", b"x"));
        // Legacy plain records are recognised; anything else is refused.
        assert_eq!(sealer.open(b"c", b"{}"), Ok(None));
        assert_eq!(sealer.open(b"c", b"\x02abc"), Err(SealError::Format));
    }

    #[test]
    fn the_key_file_is_made_once_with_owner_only_access() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.key");
        let (first, source) = load_key(None, &file).unwrap();
        assert_eq!(source, KeySource::Generated(file.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = load_key(None, &file).unwrap();
        assert_eq!((again, source), (first, KeySource::File(file.clone())));

        let configured = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let (key, source) = load_key(Some(&configured), &file).unwrap();
        assert_eq!((key, source), ([9; 32], KeySource::Configured));

        std::fs::write(&file, "short").unwrap();
        let err = load_key(None, &file).unwrap_err().to_string();
        assert!(err.contains("must be base64 of 32 random bytes"), "{err}");
        assert!(crate::config::parse_secrets_key("AAAA")
            .unwrap_err()
            .contains("it has 3"));
    }
}
