//! Passwords at rest in etcd: sealed with ChaCha20-Poly1305.
//!
//! Every replica reads the same 32-byte key from `[etcd] secret_key_file`
//! (raw 32 bytes, or 64 hex digits such as `openssl rand -hex 32` prints).
//! A sealed value is `sealed:v1:<base64(nonce || ciphertext)>`; the node id
//! is the associated data, so a sealed password copied into another node's
//! spec does not open.
//!
//! ```text
//!  Secret ──seal(node)──▶ "sealed:v1:…" (etcd) ──open(node)──▶ Secret
//!                                              └─ wrong key / node / damage ──▶ SealError::Open
//! ```
//!
//! Unlike the conductor's store there is no clear-text fallback: `open`
//! refuses anything that is not sealed.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::secret::Secret;

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret key file {0} must hold 32 bytes (raw, or as 64 hex digits)")]
    KeyLength(PathBuf),
    #[error("a sealed password does not open (other key file, other node, or damaged data)")]
    Open,
}

/// The AEAD key, loaded once at start.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(******)")
    }
}

impl Sealer {
    /// Read the key; the file must exist (every replica needs the same one).
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let bytes = std::fs::read(path).map_err(|source| SealError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
        let key = key_bytes(&bytes).ok_or_else(|| SealError::KeyLength(path.to_owned()))?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Seal `clear` for `node` (the node id is authenticated, not secret).
    pub fn seal(&self, node: &str, clear: &Secret) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: clear.expose().as_bytes(),
            aad: node.as_bytes(),
        };
        let ct = self
            .cipher
            .encrypt(&nonce, payload)
            .expect("ChaCha20-Poly1305 encryption cannot fail for small inputs");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(raw))
    }

    /// The clear text of a value sealed for `node`.
    pub fn open(&self, node: &str, sealed: &str) -> Result<Secret, SealError> {
        let b64 = sealed.strip_prefix(PREFIX).ok_or(SealError::Open)?;
        let raw = B64.decode(b64).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ct,
            aad: node.as_bytes(),
        };
        let clear = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(clear)
            .map(Secret::new)
            .map_err(|_| SealError::Open)
    }
}

/// 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
fn key_bytes(file: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(file) {
        return Some(raw);
    }
    let text = std::str::from_utf8(file).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_other_keys_nodes_and_clear_text() {
        let a = Sealer::from_key(&[7; 32]);
        let b = Sealer::from_key(&[8; 32]);
        let sealed = a.seal("node-1", &Secret::new("hunter2"));
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("hunter2"));
        assert_eq!(a.open("node-1", &sealed).unwrap().expose(), "hunter2");
        assert!(b.open("node-1", &sealed).is_err(), "other key");
        assert!(a.open("node-2", &sealed).is_err(), "other node");
        assert!(a.open("node-1", "hunter2").is_err(), "clear text");
        assert_ne!(sealed, a.seal("node-1", &Secret::new("hunter2")), "nonce");
    }

    #[test]
    fn key_files_hold_raw_or_hex_keys() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let raw = dir.join("raw.key");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        let hex = dir.join("hex.key");
        std::fs::write(&hex, format!("{}\n", "01".repeat(32))).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, b"tooshort").unwrap();
        let sealed = Sealer::load(&raw).unwrap().seal("n", &Secret::new("pw"));
        let opened = Sealer::load(&hex).unwrap().open("n", &sealed).unwrap();
        assert_eq!(opened.expose(), "pw");
        assert!(matches!(Sealer::load(&short), Err(SealError::KeyLength(_))));
        assert!(matches!(
            Sealer::load(&dir.join("missing")),
            Err(SealError::KeyFile { .. })
        ));
    }
}
