//! The one sealing format for secrets at rest, in every service:
//! ChaCha20-Poly1305 under a 32-byte key, the record's id (the node's UUID)
//! as associated data, written as `sealed:v1:<base64(nonce || ciphertext)>`.
//! A sealed value copied into another record does not open.
//!
//! This is the format console-svc has always written to etcd, so its specs
//! read unchanged across a rolling upgrade. The conductor's SQLite store
//! once wrote the same prefix without associated data: those values open
//! only through [`Sealer::open_unbound_v0`], which the conductor's store
//! uses once, when it migrates an old database (it tells old from new by
//! the database's schema version, never by guessing).
//!
//! ```text
//!  clear ──seal(id)──▶ "sealed:v1:…" ──open(id)──▶ clear
//!                                    └─ other key / id / damage ──▶ SealError::Open
//! ```
//!
//! Callers: console-svc's etcd spec documents, the conductor's store.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Every sealed value starts with this.
pub const PREFIX: &str = "sealed:v1:";
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
    #[error("a sealed secret does not open (other key file, other record, or damaged data)")]
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

    /// Read the key, creating 32 random bytes (mode 0600) when the file
    /// does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let err = |source| SealError::KeyFile {
            path: path.to_owned(),
            source,
        };
        if !path.exists() {
            let key = ChaCha20Poly1305::generate_key(&mut OsRng);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(err)?;
            f.write_all(&key).map_err(err)?;
        }
        Self::load(path)
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Seal `clear` for record `id` (the id is authenticated, not secret).
    pub fn seal(&self, id: &str, clear: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: clear.as_bytes(),
            aad: id.as_bytes(),
        };
        let ct = self
            .cipher
            .encrypt(&nonce, payload)
            .expect("ChaCha20-Poly1305 encryption cannot fail for small inputs");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(raw))
    }

    /// The clear text of a value sealed for record `id`. Anything else
    /// (clear text, another record's value, another key) is refused.
    pub fn open(&self, id: &str, sealed: &str) -> Result<String, SealError> {
        self.decrypt(sealed, id.as_bytes())
    }

    /// The clear text of a value the conductor sealed before the format
    /// was shared: same prefix, no associated data. Only for migrating an
    /// old database.
    pub fn open_unbound_v0(&self, sealed: &str) -> Result<String, SealError> {
        self.decrypt(sealed, b"")
    }

    fn decrypt(&self, sealed: &str, aad: &[u8]) -> Result<String, SealError> {
        let b64 = sealed.strip_prefix(PREFIX).ok_or(SealError::Open)?;
        let raw = B64.decode(b64).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let clear = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Open)?;
        String::from_utf8(clear).map_err(|_| SealError::Open)
    }
}

/// Is `value` in the sealed form (of either generation)?
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
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
    fn seals_opens_and_refuses_other_keys_records_and_clear_text() {
        let a = Sealer::from_key(&[7; 32]);
        let b = Sealer::from_key(&[8; 32]);
        let sealed = a.seal("node-1", "hunter2");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("hunter2"));
        assert_eq!(a.open("node-1", &sealed).unwrap(), "hunter2");
        assert!(b.open("node-1", &sealed).is_err(), "other key");
        assert!(a.open("node-2", &sealed).is_err(), "other record");
        assert!(a.open("node-1", "hunter2").is_err(), "clear text");
        assert!(a.open_unbound_v0(&sealed).is_err(), "bound is not unbound");
        assert_ne!(sealed, a.seal("node-1", "hunter2"), "nonce");
    }

    /// A value as the conductor sealed it before: no associated data.
    #[test]
    fn the_conductors_old_values_open_only_as_unbound() {
        let key = [9u8; 32];
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut raw = nonce.to_vec();
        raw.extend(cipher.encrypt(&nonce, b"old-pw".as_slice()).unwrap());
        let old = format!("{PREFIX}{}", B64.encode(raw));
        let s = Sealer::from_key(&key);
        assert_eq!(s.open_unbound_v0(&old).unwrap(), "old-pw");
        assert!(s.open("node-1", &old).is_err());
        assert!(s.open("", &old).is_ok(), "empty AAD is the unbound form");
    }

    #[test]
    fn key_files_hold_raw_or_hex_keys_and_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        let hex = dir.path().join("hex.key");
        std::fs::write(&hex, format!("{}\n", "01".repeat(32))).unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"tooshort").unwrap();
        let sealed = Sealer::load(&raw).unwrap().seal("n", "pw");
        assert_eq!(
            Sealer::load(&hex).unwrap().open("n", &sealed).unwrap(),
            "pw"
        );
        assert!(matches!(Sealer::load(&short), Err(SealError::KeyLength(_))));
        let missing = dir.path().join("missing");
        assert!(matches!(
            Sealer::load(&missing),
            Err(SealError::KeyFile { .. })
        ));
        let made = Sealer::load_or_create(&missing).unwrap().seal("n", "pw");
        let mode = std::fs::metadata(&missing).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            Sealer::load(&missing).unwrap().open("n", &made).unwrap(),
            "pw"
        );
    }
}
