//! Secrets at rest: driver_info passwords sealed with ChaCha20-Poly1305.
//!
//! The key is 32 random bytes in a file (mode 0600), created on first start
//! beside the database unless configured. A sealed value is the string
//! `sealed:v1:<base64(nonce || ciphertext)>`. Callers: the store (`db`)
//! seals on every write and opens on every read, so nothing else sees the
//! sealed form.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::model::{is_secret_key, Dict};

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret key file {0} must hold exactly 32 bytes")]
    KeyLength(PathBuf),
    #[error("a sealed secret does not open with this key (wrong key file, or damaged data)")]
    Open,
}

/// The AEAD key, loaded once.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// Load the key from `path`, creating it (0600) when it does not exist.
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
        let bytes = std::fs::read(path).map_err(err)?;
        if bytes.len() != 32 {
            return Err(SealError::KeyLength(path.to_owned()));
        }
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    pub fn seal(&self, clear: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, clear.as_bytes())
            .expect("ChaCha20-Poly1305 encryption cannot fail for small inputs");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(raw))
    }

    /// The clear text of a sealed value; a value that is not sealed (written
    /// before sealing existed) passes through.
    pub fn open(&self, value: &str) -> Result<String, SealError> {
        let Some(b64) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_owned());
        };
        let raw = B64.decode(b64).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let clear = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(clear).map_err(|_| SealError::Open)
    }

    /// `dict` with every string secret sealed.
    pub fn seal_dict(&self, dict: &Dict) -> Dict {
        map_secrets(dict, |s| Ok(self.seal(s))).expect("sealing cannot fail")
    }

    /// `dict` with every sealed secret opened.
    pub fn open_dict(&self, dict: &Dict) -> Result<Dict, SealError> {
        map_secrets(dict, |s| self.open(s))
    }
}

fn map_secrets(
    dict: &Dict,
    f: impl Fn(&str) -> Result<String, SealError>,
) -> Result<Dict, SealError> {
    dict.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) if is_secret_key(k) => {
                Ok((k.clone(), serde_json::Value::String(f(s)?)))
            }
            other => Ok((k.clone(), other.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_wrong_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = Sealer::load_or_create(&dir.path().join("b.key")).unwrap();
        let sealed = a.seal("hunter2");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("hunter2"));
        assert_eq!(a.open(&sealed).unwrap(), "hunter2");
        assert!(b.open(&sealed).is_err());
        assert_eq!(a.open("plain").unwrap(), "plain");
        let again = Sealer::load_or_create(&dir.path().join("a.key")).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "hunter2");
    }
}
